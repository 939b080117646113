//! `protocol-model [per-commit|deep]`: explores the protocol, then wallet-svc's transactions,
//! then the waiting room's steps, under one of the configurations, prints the states explored
//! and any counterexample, and fails if a property breaks.

use std::process::ExitCode;

use protocol_model::{
    AdmissionConfig, Config, Report, WalletConfig, check, check_admission, check_wallet,
};

fn main() -> ExitCode {
    let depth = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "per-commit".to_owned());
    let (config, wallet, admission) = match depth.as_str() {
        "per-commit" => (
            Config::per_commit(),
            WalletConfig::per_commit(),
            AdmissionConfig::per_commit(),
        ),
        "deep" => (
            Config::deep(),
            WalletConfig::deep(),
            AdmissionConfig::deep(),
        ),
        other => {
            eprintln!("unknown configuration {other:?}: use per-commit or deep");
            return ExitCode::FAILURE;
        }
    };
    let protocol = check(config, false);
    print_report(&format!("protocol model ({depth})"), &protocol);
    let wallet = check_wallet(wallet, false);
    print_report(&format!("wallet model ({depth})"), &wallet);
    let admission = check_admission(admission, false);
    print_report(&format!("admission model ({depth})"), &admission);
    if protocol.is_clean() && wallet.is_clean() && admission.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_report(name: &str, report: &Report) {
    println!("{}", report.summary(name));
    for (property, trace) in &report.counterexamples {
        println!("\ncounterexample to \"{property}\":\n{trace}");
    }
    for property in &report.unreached {
        println!("never reached: \"{property}\"");
    }
}
