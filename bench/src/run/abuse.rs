//! The abuse scenario of the run: (d)'s load through the plaintext pair's reservation-svc while
//! every attack of `crate::abuse` runs against it, against (d)'s plaintext round of the
//! comparisons, the same load on the same pair without attack.

use super::context::{Bench, CLIENTS};
use super::distinct::DISTINCT_SEATS;
use crate::abuse::{Abuse, Attack, Load, Subject, measure};
use crate::report::Scenario;
use crate::tls_cost;

impl Bench {
    /// The abuse scenario, against the plaintext pair's reservation-svc (the attackers speak
    /// plaintext HTTP/2; the limits are the same layers as production's). Its run without
    /// attack is (d)'s plaintext round, the same load on the same pair. `None` without a
    /// plaintext pair and its metrics address.
    pub(super) async fn abuse(&self) -> anyhow::Result<Option<Abuse>> {
        let (Some(pair), Some(metrics), Some(addr)) = (
            &self.plaintext,
            &self.args.plaintext_reservation_metrics,
            &self.args.plaintext_reservation,
        ) else {
            return Ok(None);
        };
        let subject = Subject {
            described: "the plaintext pair (`INSECURE`: the same limits as production's, and \
                        attackers that need no TLS)"
                .to_owned(),
            addr,
            metrics,
            load: &pair.reservation,
            services: [pair.reservation_name, pair.wallet_name],
        };
        let load = Load {
            requests: self.sizes.distinct_holds,
            clients: CLIENTS,
            seats: self.sizes.seats,
        };
        let measured = measure(&subject, load, &Attack::ALL, self.calm(), &self.sampler).await?;
        Ok(Some(measured))
    }

    /// The abuse scenario's run without attack: the median of (d)'s plaintext rounds, if any.
    fn calm(&self) -> Option<Scenario> {
        let calm_rounds: Vec<Scenario> = self
            .plaintext_rounds
            .lock()
            .map(|rounds| {
                rounds
                    .iter()
                    .filter(|round| round.key == DISTINCT_SEATS)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        (!calm_rounds.is_empty()).then(|| {
            let mut calm = tls_cost::median(calm_rounds);
            calm.key = "abuse-calm".to_owned();
            calm.name = "(d) distinct seats, no attack (its plaintext round above)".to_owned();
            calm
        })
    }
}
