//! Runs an exploration and reports what it found.

use std::time::{Duration, Instant};

use stateright::{Checker, HasDiscoveries, Model};

use crate::config::Config;
use crate::model::ProtocolModel;

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
}

/// Explores every state reachable under `config`, breadth first (so counterexamples are
/// shortest), on every core; with `stop_at_first_failure`, until one property breaks.
pub fn check(config: Config, stop_at_first_failure: bool) -> Report {
    let model = ProtocolModel::new(config);
    let properties = model.properties();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let started = Instant::now();
    let mut checker = model.checker().threads(threads);
    if stop_at_first_failure {
        checker = checker.finish_when(HasDiscoveries::AnyFailures);
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
