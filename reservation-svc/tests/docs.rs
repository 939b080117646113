//! The configuration table of `docs/OPERATING.md` says what the services read: every flag of
//! either service has its row with its variable, flag and default, and every row names a
//! setting one of them reads. A setting added, renamed or given another default without the
//! table fails here.

use std::collections::BTreeMap;

use clap::CommandFactory;

/// Read by the telemetry set-up rather than a flag (OTEL_RESOURCE_ATTRIBUTES by the
/// OpenTelemetry SDK's resource, which the set-up builds while traces are exported).
const TELEMETRY_VARIABLES: [&str; 4] = [
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// A row of the table: (flag, default), by variable.
fn documented() -> BTreeMap<String, (String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATING.md");
    let text = std::fs::read_to_string(&path).expect("docs/OPERATING.md");
    let unquote = |cell: &str| cell.trim().trim_matches('`').to_owned();
    text.lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
            assert!(cells.len() >= 4, "a row of four cells: {line}");
            // A setting with no default is "unset".
            let default = match unquote(cells[2]).as_str() {
                "unset" => String::new(),
                default => default.to_owned(),
            };
            (unquote(cells[0]), (unquote(cells[1]), default))
        })
        .collect()
}

#[test]
fn the_configuration_table_matches_the_services_flags() {
    let table = documented();
    let mut read = Vec::new();
    for command in [
        wallet_svc::config::Cli::command(),
        reservation_svc::config::Cli::command(),
    ] {
        for argument in command.get_arguments() {
            let Some(variable) = argument.get_env() else {
                continue;
            };
            let variable = variable.to_string_lossy().into_owned();
            let flag = format!("--{}", argument.get_long().expect("a long flag"));
            let default = argument
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",");
            let (documented_flag, documented_default) = table
                .get(&variable)
                .unwrap_or_else(|| panic!("{variable} ({flag}) is missing from the table"));
            assert_eq!(documented_flag, &flag, "the flag of {variable}");
            assert_eq!(documented_default, &default, "the default of {variable}");
            read.push(variable);
        }
    }
    for variable in table.keys() {
        assert!(
            read.contains(variable) || TELEMETRY_VARIABLES.contains(&variable.as_str()),
            "the table names {variable}, which neither service reads"
        );
    }
}
