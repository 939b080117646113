//! `docker-compose.yml` configures the services only with settings they read: a misspelt
//! variable would be ignored silently and the service would run on its default.

use std::collections::BTreeSet;

use clap::CommandFactory;
use yaml_rust2::YamlLoader;

/// Read by the telemetry set-up rather than a flag (OTEL_RESOURCE_ATTRIBUTES by the
/// OpenTelemetry SDK's resource, which the set-up builds while traces are exported).
const TELEMETRY_VARIABLES: [&str; 3] = [
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_RESOURCE_ATTRIBUTES",
];

fn variables_read_by(command: clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|argument| argument.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .chain(TELEMETRY_VARIABLES.map(str::to_owned))
        .collect()
}

#[test]
fn the_compose_file_sets_only_variables_the_services_read() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
    let text = std::fs::read_to_string(&path).expect("docker-compose.yml");
    let compose = YamlLoader::load_from_str(&text).expect("valid YAML");
    let services = &compose[0]["services"];

    for (service, command) in [
        ("wallet-svc", wallet_svc::config::Cli::command()),
        ("reservation-svc", reservation_svc::config::Cli::command()),
    ] {
        let read = variables_read_by(command);
        let environment = services[service]["environment"]
            .as_hash()
            .unwrap_or_else(|| panic!("{service} has an environment map"));
        assert!(!environment.is_empty(), "{service} sets its configuration");
        for name in environment.keys() {
            let name = name.as_str().expect("variable names are strings");
            assert!(
                read.contains(name),
                "{service} does not read {name}; it reads {read:?}"
            );
        }
    }
}

#[test]
fn the_contract_variables_are_read_by_the_services() {
    let wallet = variables_read_by(wallet_svc::config::Cli::command());
    let reservation = variables_read_by(reservation_svc::config::Cli::command());
    for name in [
        "WALLET_LISTEN_ADDR",
        "WALLET_DATABASE_URL",
        "WALLET_METRICS_ADDR",
    ] {
        assert!(wallet.contains(name), "{name}");
    }
    for name in [
        "RESERVATION_LISTEN_ADDR",
        "RESERVATION_DATABASE_URL",
        "REDIS_URL",
        "WALLET_ENDPOINT",
        "SEAT_HOLD_TTL",
        "SEAT_LOCK_TTL",
        "SEAT_LOCK_PREFIX",
        "RESERVATION_METRICS_ADDR",
    ] {
        assert!(reservation.contains(name), "{name}");
    }
}

#[test]
fn the_image_build_context_leaves_out_build_output_history_and_local_keys() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.dockerignore");
    let text = std::fs::read_to_string(&path).expect(".dockerignore");
    let ignored: BTreeSet<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.trim_matches('/'))
        .collect();
    // Everything .gitignore keeps out of the repository, and the repository's history.
    let gitignore = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.gitignore"),
    )
    .expect(".gitignore");
    for entry in gitignore
        .lines()
        .map(|line| line.trim().trim_matches('/'))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .chain([".git"])
    {
        assert!(ignored.contains(entry), "{entry} is sent to docker build");
    }
}

#[test]
fn the_compose_file_publishes_on_the_loopback_only_and_restarts_what_stops() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
    let text = std::fs::read_to_string(&path).expect("docker-compose.yml");
    let compose = YamlLoader::load_from_str(&text).expect("valid YAML");
    let services = compose[0]["services"].as_hash().expect("services");
    // Run once, to completion: the others wait for `pki` to have succeeded, and the demo
    // opens its waiting room once.
    let one_shot = ["pki", "room-demo"];
    for (name, service) in services {
        let name = name.as_str().expect("service names are strings");
        // Postgres trusts every connection and Redis asks no password: nothing is offered to
        // the network beyond this machine.
        let ports = service["ports"].as_vec().map(Vec::as_slice);
        for port in ports.unwrap_or_default() {
            let port = port
                .as_str()
                .expect("ports as \"address:port:port\" strings");
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} on every interface"
            );
        }
        let restart = service["restart"].as_str();
        if one_shot.contains(&name) {
            assert_eq!(restart, Some("no"), "{name} runs once");
        } else {
            assert_eq!(restart, Some("unless-stopped"), "{name} is started again");
        }
    }
}
