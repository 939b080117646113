//! Runs an exploration and reports what it found.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use stateright::{Checker, HasDiscoveries, Model};

use crate::admission_model::{AdmissionBug, AdmissionConfig, AdmissionModel};
use crate::config::{Bug, Config};
use crate::model::ProtocolModel;
use crate::wallet_model::{WalletConfig, WalletModel};

#[derive(Debug)]
pub struct Report {
    pub unique_states: usize,
    pub states: usize,
    pub max_depth: usize,
    pub elapsed: Duration,
    /// Broken `always` properties, each with the trace that breaks it.
    pub counterexamples: Vec<(&'static str, String)>,
    /// `sometimes` properties never reached.
    pub unreached: Vec<&'static str>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.counterexamples.is_empty() && self.unreached.is_empty()
    }

    /// One line of what an exploration of the model `name` covered.
    pub fn summary(&self, name: &str) -> String {
        format!(
            "{name}: {} unique states ({} generated), depth {}, {:.1?}",
            self.unique_states, self.states, self.max_depth, self.elapsed
        )
    }

    /// What a test of the model asks of a clean exploration: no property broken (each
    /// counterexample printed), every `sometimes` reached (else it was not really checked), and
    /// at least `at_least` unique states (fewer means the model stopped exploring what it used
    /// to).
    pub fn assert_clean(&self, name: &str, at_least: usize) {
        eprintln!("{}", self.summary(name));
        for (property, trace) in &self.counterexamples {
            eprintln!("counterexample to \"{property}\":\n{trace}");
        }
        assert!(
            self.counterexamples.is_empty(),
            "properties broken: {:?}",
            self.counterexamples
                .iter()
                .map(|(property, _)| property)
                .collect::<Vec<_>>()
        );
        assert!(
            self.unreached.is_empty(),
            "never reached, so not really checked: {:?}",
            self.unreached
        );
        assert!(
            self.unique_states >= at_least,
            "only {} unique states explored",
            self.unique_states
        );
    }

    /// What a test of a seeded `bug` asks: some property broke; prints which, and the actions
    /// that break it.
    pub fn assert_caught(&self, bug: impl Debug) {
        assert!(
            !self.counterexamples.is_empty(),
            "{bug:?} went unnoticed in {} unique states",
            self.unique_states
        );
        for (property, trace) in &self.counterexamples {
            let actions = trace
                .lines()
                .take_while(|line| !line.starts_with("last state"));
            eprintln!(
                "{bug:?} breaks \"{property}\" ({} unique states, {:.1?}):\n{}",
                self.unique_states,
                self.elapsed,
                actions.collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// Explores every state of the protocol reachable under `config`, breadth first (so
/// counterexamples are shortest), on every core; with `stop_at_first_failure`, until one
/// property breaks.
pub fn check(config: Config, stop_at_first_failure: bool) -> Report {
    explore(
        ProtocolModel::new(config),
        stop_at_first_failure.then_some(HasDiscoveries::AnyFailures),
    )
}

/// Explores the protocol under `config` until `property` is discovered (broken, or reached).
pub fn check_until(config: Config, property: &'static str) -> Report {
    explore(
        ProtocolModel::new(config),
        Some(HasDiscoveries::AnyOf(BTreeSet::from([property]))),
    )
}

/// Explores wallet-svc's transactions under `config`, as [`check`] does the protocol.
pub fn check_wallet(config: WalletConfig, stop_at_first_failure: bool) -> Report {
    explore(
        WalletModel::new(config),
        stop_at_first_failure.then_some(HasDiscoveries::AnyFailures),
    )
}

/// Explores the waiting room's steps under `config`, as [`check`] does the protocol.
pub fn check_admission(config: AdmissionConfig, stop_at_first_failure: bool) -> Report {
    explore(
        AdmissionModel::new(config),
        stop_at_first_failure.then_some(HasDiscoveries::AnyFailures),
    )
}

/// Explores the waiting room's per-commit configuration with `bug` seeded, until a property
/// breaks.
pub fn check_admission_bug(bug: AdmissionBug) -> Report {
    check_admission(AdmissionConfig::per_commit().with_bug(bug), true)
}

/// Explores the per-commit configuration of the model the bug belongs to, with `bug` seeded,
/// until a property breaks.
pub fn check_bug(bug: Bug) -> Report {
    if bug.in_wallet_model() {
        check_wallet(WalletConfig::per_commit().with_bug(bug), true)
    } else {
        check(Config::per_commit().with_bug(bug), true)
    }
}

fn explore<M>(model: M, finish_when: Option<HasDiscoveries>) -> Report
where
    M: Model + Send + Sync + 'static,
    M::State: Debug + Hash + Send + Sync + Clone + PartialEq + 'static,
    M::Action: Debug + Clone + PartialEq,
{
    let properties = model.properties();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let started = Instant::now();
    let mut checker = model.checker().threads(threads);
    if let Some(finish_when) = finish_when {
        checker = checker.finish_when(finish_when);
    }
    let checker = checker.spawn_bfs().join();
    let elapsed = started.elapsed();
    let discoveries = checker.discoveries();
    let mut counterexamples = Vec::new();
    let mut unreached = Vec::new();
    for property in &properties {
        let found = discoveries.get(property.name);
        if property.expectation.discovery_is_failure() {
            if let Some(path) = found {
                let trace = format!("{path}last state: {:#?}\n", path.last_state());
                counterexamples.push((property.name, trace));
            }
        } else if found.is_none() {
            unreached.push(property.name);
        }
    }
    Report {
        unique_states: checker.unique_state_count(),
        states: checker.state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        counterexamples,
        unreached,
    }
}
