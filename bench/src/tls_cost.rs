//! The cost of TLS and tokens: the production services (TLS, mutual TLS to the wallet, each
//! user's token) against a plaintext pair (`INSECURE`) on the same databases, scenario by
//! scenario, in alternating rounds of the same work.

use crate::probe::{CpuPerRequest, HARNESS};
use crate::report::{Comparison, Scenario, Target, micros, thousands};

/// The least share of plaintext throughput the production services keep on each compared
/// scenario.
pub const TARGET: f64 = 0.85;

/// Which pair of services a round runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Production,
    Plaintext,
}

impl Side {
    /// What a round's idempotency keys and progress line call it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Plaintext => "plaintext",
        }
    }
}

/// Compares `rounds` rounds of each side, alternated: production's first round is `first`
/// (the scenario as the main table reports it), then plaintext, then the two take turns. Each
/// side's median round by rate stands for it, so one round disturbed by the machine's other
/// work does not decide the ratio.
pub async fn compare(
    first: &Scenario,
    rounds: usize,
    mut measure: impl AsyncFnMut(Side, usize) -> anyhow::Result<Scenario>,
) -> anyhow::Result<Comparison> {
    let mut production = vec![first.clone()];
    let mut plaintext = Vec::new();
    for round in 0..rounds.max(1) {
        plaintext.push(measure(Side::Plaintext, round).await?);
        if round > 0 {
            production.push(measure(Side::Production, round).await?);
        }
    }
    let production = median(production);
    let plaintext = median(plaintext);
    Ok(Comparison {
        key: first.key.clone(),
        name: first.name.clone(),
        rounds: rounds.max(1),
        rate_unit: first.rate_unit.clone(),
        ratio: production.rate / plaintext.rate.max(f64::EPSILON),
        production_rate: production.rate,
        plaintext_rate: plaintext.rate,
        production_cpu: production.cpu_per_request,
        plaintext_cpu: plaintext.cpu_per_request,
    })
}

/// The round of median rate (of an odd count; the upper of the middle two otherwise).
pub fn median(mut rounds: Vec<Scenario>) -> Scenario {
    rounds.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let middle = rounds.len() / 2;
    rounds.swap_remove(middle)
}

/// Where production's extra CPU per call goes, from the CPU breakdowns of the two median
/// rounds: the load generator's own TLS and token headers, the services', and the rest of the
/// machine (Postgres, Redis, the kernel).
pub fn note(comparison: &Comparison) -> String {
    let extra = |production: f64, plaintext: f64| micros(production - plaintext);
    let (production, plaintext) = (&comparison.production_cpu, &comparison.plaintext_cpu);
    let share = |cpu: &CpuPerRequest, harness: bool| -> f64 {
        cpu.by_process_us
            .iter()
            .filter(|(name, _)| (name.as_str() == HARNESS) == harness)
            .map(|(_, us)| us)
            .sum()
    };
    let (services, plaintext_services) = (share(production, false), share(plaintext, false));
    let (harness, plaintext_harness) = (share(production, true), share(plaintext, true));
    format!(
        "TLS and tokens on {}: the machine spends {} more per call through production ({} \
         against {}): the services {}, the load generator's own TLS and tokens {}, the rest \
         (Postgres, Redis, the kernel) {}.",
        comparison.short_name(),
        extra(production.machine_us, plaintext.machine_us),
        micros(production.machine_us),
        micros(plaintext.machine_us),
        extra(services, plaintext_services),
        extra(harness, plaintext_harness),
        extra(
            production.machine_us - services - harness,
            plaintext.machine_us - plaintext_services - plaintext_harness
        ),
    )
}

/// The target that production keeps [`TARGET`] of plaintext's throughput on a scenario.
pub fn target(comparison: &Comparison) -> Target {
    Target {
        what: format!(
            "TLS and tokens on {}: production vs plaintext",
            comparison.short_name()
        ),
        goal: format!("≥ {TARGET}×"),
        measured: format!(
            "{:.2}× ({} vs {} {}{})",
            comparison.ratio,
            thousands(comparison.production_rate.round() as u64),
            thousands(comparison.plaintext_rate.round() as u64),
            comparison.rate_unit,
            if comparison.rounds > 1 {
                format!(", medians of {} rounds each", comparison.rounds)
            } else {
                String::new()
            },
        ),
        met: comparison.ratio >= TARGET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Measured;

    fn at(rate: f64) -> Scenario {
        let mut scenario = Scenario::new(
            "s",
            "(x) scenario: detail",
            &Measured::default(),
            1,
            1,
            None,
            "req/s",
            None,
        );
        scenario.rate = rate;
        scenario
    }

    #[tokio::test]
    async fn rounds_alternate_and_the_medians_compare() {
        let mut order = Vec::new();
        let rates = [
            (Side::Plaintext, 100.0),
            (Side::Plaintext, 10.0),
            (Side::Production, 95.0),
        ];
        let mut next = rates.iter();
        let comparison = compare(&at(1.0), 2, async |side, round| {
            order.push((side, round));
            let (expected, rate) = next
                .next()
                .copied()
                .ok_or_else(|| anyhow::anyhow!("extra"))?;
            assert_eq!(side, expected);
            Ok(at(rate))
        })
        .await
        .expect("compared");
        assert_eq!(
            order,
            [
                (Side::Plaintext, 0),
                (Side::Plaintext, 1),
                (Side::Production, 1)
            ]
        );
        // Medians (upper of two): production 95 of {1, 95}, plaintext 100 of {10, 100}.
        assert_eq!(comparison.production_rate, 95.0);
        assert_eq!(comparison.plaintext_rate, 100.0);
        assert!((comparison.ratio - 0.95).abs() < 1e-9);
        assert!(target(&comparison).met);
    }
}
