//! `protocol-model [per-commit|deep]`: explores the protocol under one of the configurations,
//! prints the states explored and any counterexample, and fails if a property breaks.

use std::process::ExitCode;

use protocol_model::{Config, check};

fn main() -> ExitCode {
    let depth = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "per-commit".to_owned());
    let config = match depth.as_str() {
        "per-commit" => Config::per_commit(),
        "deep" => Config::deep(),
        other => {
            eprintln!("unknown configuration {other:?}: use per-commit or deep");
            return ExitCode::FAILURE;
        }
    };
    let report = check(config, false);
    println!(
        "protocol model ({depth}): {} unique states ({} generated), depth {}, {:.1?}",
        report.unique_states, report.states, report.max_depth, report.elapsed
    );
    for (property, trace) in &report.counterexamples {
        println!("\ncounterexample to \"{property}\":\n{trace}");
    }
    for property in &report.unreached {
        println!("never reached: \"{property}\"");
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
