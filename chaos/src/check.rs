//! The invariants, read with `psql` straight from both databases once everything is quiet.
//! Each finding names the rows that break it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Args;
use crate::workload::{Shared, lock};

/// Runs `sql` with `psql` against `url`; its rows, fields split.
pub async fn psql(url: &str, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("psql")
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-F",
                "\u{1f}",
            ])
            .args(["-d", url, "-c", sql])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("psql: no answer in 60 s"))??;
    anyhow::ensure!(
        output.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| line.split('\u{1f}').map(str::to_owned).collect())
        .collect())
}

const UNSETTLED: &str = "SELECT \
    count(*) FILTER (WHERE status = 'PAYING'), \
    count(*) FILTER (WHERE status = 'CONFIRMED' AND cancel_requested_at IS NOT NULL) \
    FROM reservations";

/// Waits until nothing is PAYING and no cancellation of a paid reservation is half-done: the
/// reconciler's work after the workload. Err names what is left after `within`.
pub async fn settle(args: &Args, within: Duration) -> Result<(), String> {
    let started = Instant::now();
    let mut last;
    loop {
        match psql(&args.reservation_db, UNSETTLED).await {
            Ok(rows) if rows.first().is_some_and(|r| r.iter().all(|n| n == "0")) => {
                return Ok(());
            }
            Ok(rows) => {
                last = format!(
                    "{} PAYING, {} cancellations of paid reservations unfinished",
                    rows.first().and_then(|r| r.first()).map_or("?", |n| n),
                    rows.first().and_then(|r| r.get(1)).map_or("?", |n| n)
                );
            }
            Err(e) => last = format!("{e:#}"),
        }
        if started.elapsed() >= within {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "not settled {}s after the workload stopped: {last}",
        within.as_secs()
    ))
}

/// Queries whose every row breaks an invariant, with the invariant's name.
const RESERVATION_CHECKS: &[(&str, &str)] = &[
    (
        "at most one active (HELD, PAYING, CONFIRMED) reservation per seat",
        "SELECT schedule_id, seat_no, string_agg(id || ' ' || status, ', ' ORDER BY id) \
         FROM reservations WHERE status IN ('HELD', 'PAYING', 'CONFIRMED') \
         GROUP BY schedule_id, seat_no HAVING count(*) > 1",
    ),
    (
        "a seat is SOLD exactly when one reservation of it is CONFIRMED",
        "SELECT s.schedule_id, s.seat_no, s.status, \
                count(r.id) FILTER (WHERE r.status = 'CONFIRMED') \
         FROM seats s LEFT JOIN reservations r \
           ON r.schedule_id = s.schedule_id AND r.seat_no = s.seat_no \
         GROUP BY s.schedule_id, s.seat_no, s.status \
         HAVING (s.status = 'SOLD') <> (count(r.id) FILTER (WHERE r.status = 'CONFIRMED') = 1) \
             OR count(r.id) FILTER (WHERE r.status = 'CONFIRMED') > 1",
    ),
    (
        "a seat reads as its active reservation (HELD for HELD or PAYING, else AVAILABLE)",
        "SELECT s.schedule_id, s.seat_no, s.status, r.id, r.status FROM seats s \
         LEFT JOIN reservations r ON r.schedule_id = s.schedule_id AND r.seat_no = s.seat_no \
          AND r.status IN ('HELD', 'PAYING', 'CONFIRMED') \
         WHERE s.status <> CASE r.status WHEN 'CONFIRMED' THEN 'SOLD' WHEN 'HELD' THEN 'HELD' \
                                         WHEN 'PAYING' THEN 'HELD' ELSE 'AVAILABLE' END",
    ),
    (
        "nothing PAYING after quiescence",
        "SELECT id, user_id, pay_attempt, updated_at FROM reservations WHERE status = 'PAYING'",
    ),
    (
        "no cancellation half-done after quiescence",
        "SELECT id, status, cancel_requested_at FROM reservations \
         WHERE cancel_requested_at IS NOT NULL AND status <> 'CANCELLED'",
    ),
];

const WALLET_CHECKS: &[(&str, &str)] = &[
    (
        "balance = ledger sum for every user",
        "SELECT w.user_id, w.balance, COALESCE(SUM(t.delta), 0) FROM wallets w \
         LEFT JOIN wallet_transactions t ON t.user_id = w.user_id \
         GROUP BY w.user_id, w.balance HAVING w.balance <> COALESCE(SUM(t.delta), 0)",
    ),
    (
        "at most one refund per Use",
        "SELECT refund_of, string_agg(id::text, ', ') FROM wallet_transactions \
         WHERE refund_of IS NOT NULL GROUP BY refund_of HAVING count(*) > 1",
    ),
    (
        "a refund gives back its Use, of the same user, in full",
        "SELECT r.id, r.refund_of, u.kind, r.amount, u.amount FROM wallet_transactions r \
         JOIN wallet_transactions u ON u.id = r.refund_of \
         WHERE u.kind <> 'USE' OR r.amount <> u.amount OR r.user_id <> u.user_id",
    ),
];

/// A reservation's row, as the money check needs it.
struct Reservation {
    id: i64,
    user_id: i64,
    status: String,
    pay_attempt: i32,
    nonce: String,
    price: i64,
    payment_transaction_id: Option<i64>,
    schedule_id: i64,
    seat_no: i32,
}

/// A ledger row.
struct Movement {
    id: i64,
    user_id: i64,
    kind: String,
    amount: i64,
}

fn num<T: std::str::FromStr>(row: &[String], at: usize) -> anyhow::Result<T> {
    row.get(at)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("field {at} of {row:?}"))
}

/// Every invariant; each finding is one violation, naming its rows.
pub async fn invariants(args: &Args, shared: &Shared) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for (name, sql) in RESERVATION_CHECKS {
        for row in psql(&args.reservation_db, sql).await? {
            found.push(format!("{name}: {}", row.join(" | ")));
        }
    }
    for (name, sql) in WALLET_CHECKS {
        for row in psql(&args.wallet_db, sql).await? {
            found.push(format!("{name}: {}", row.join(" | ")));
        }
    }

    let reservations: Vec<Reservation> = psql(
        &args.reservation_db,
        "SELECT id, user_id, status, pay_attempt, COALESCE(payment_key_nonce, ''), price, \
                COALESCE(payment_transaction_id, -1), schedule_id, seat_no FROM reservations",
    )
    .await?
    .iter()
    .map(|row| {
        Ok(Reservation {
            id: num(row, 0)?,
            user_id: num(row, 1)?,
            status: row.get(2).cloned().unwrap_or_default(),
            pay_attempt: num(row, 3)?,
            nonce: row.get(4).cloned().unwrap_or_default(),
            price: num(row, 5)?,
            payment_transaction_id: Some(num::<i64>(row, 6)?).filter(|id| *id >= 0),
            schedule_id: num(row, 7)?,
            seat_no: num(row, 8)?,
        })
    })
    .collect::<anyhow::Result<_>>()?;
    // Keys are stored under their caller ('<owner> <key>'): compared as the caller sent them.
    let ledger = psql(
        &args.wallet_db,
        "SELECT id, user_id, kind, amount, substring(idempotency_key FROM '[^ ]*$'), \
                COALESCE(refund_of, -1) FROM wallet_transactions",
    )
    .await?;
    let mut uses_by_key: HashMap<String, Movement> = HashMap::new();
    let mut by_id: HashMap<i64, (i64, String)> = HashMap::new();
    let mut refunds_of: HashMap<i64, Vec<i64>> = HashMap::new();
    for row in &ledger {
        let movement = Movement {
            id: num(row, 0)?,
            user_id: num(row, 1)?,
            kind: row.get(2).cloned().unwrap_or_default(),
            amount: num(row, 3)?,
        };
        let key = row.get(4).cloned().unwrap_or_default();
        let refund_of: i64 = num(row, 5)?;
        by_id.insert(movement.id, (movement.user_id, movement.kind.clone()));
        if refund_of >= 0 {
            refunds_of.entry(refund_of).or_default().push(movement.id);
        }
        if movement.kind == "USE" {
            uses_by_key.insert(key, movement);
        }
    }

    const MONEY: &str = "money matches the reservation's outcome";
    for r in &reservations {
        if r.price == 0 {
            continue;
        }
        let uses: Vec<&Movement> = (1..=r.pay_attempt)
            .filter_map(|attempt| {
                uses_by_key.get(&protocol::payment::use_key(&r.nonce, r.id, attempt))
            })
            .collect();
        let refunds: usize = uses
            .iter()
            .map(|u| refunds_of.get(&u.id).map_or(0, Vec::len))
            .sum();
        let describe = || {
            let uses: Vec<String> = uses
                .iter()
                .map(|u| format!("{} of {} by user {}", u.id, u.amount, u.user_id))
                .collect();
            format!(
                "reservation {} (user {}, schedule {}, seat {}) is {} after {} attempts, \
                 payment transaction {:?}: uses [{}], {} refunds",
                r.id,
                r.user_id,
                r.schedule_id,
                r.seat_no,
                r.status,
                r.pay_attempt,
                r.payment_transaction_id,
                uses.join(", "),
                refunds
            )
        };
        let exact = match r.status.as_str() {
            "CONFIRMED" => {
                uses.len() == 1
                    && refunds == 0
                    && uses[0].amount == r.price
                    && uses[0].user_id == r.user_id
                    && r.payment_transaction_id == Some(uses[0].id)
            }
            "CANCELLED" if r.payment_transaction_id.is_some() => {
                uses.len() == 1
                    && refunds == 1
                    && r.payment_transaction_id == Some(uses[0].id)
                    && uses[0].user_id == r.user_id
            }
            // Not paid for: whatever was debited was given back, once.
            _ => uses
                .iter()
                .all(|u| refunds_of.get(&u.id).map_or(0, Vec::len) == 1),
        };
        if !exact {
            found.push(format!("{MONEY}: {}", describe()));
        }
    }

    // What clients were told: a hold answered OK is a reservation of that user and seat; one
    // whose cancel answered OK is CANCELLED; one paid for (OK) and never cancelled is CONFIRMED.
    const TOLD: &str = "an acknowledged answer holds";
    let by_reservation: HashMap<i64, &Reservation> =
        reservations.iter().map(|r| (r.id, r)).collect();
    let tracked = lock(&shared.tracked).clone();
    for (id, told) in &tracked {
        let Some(row) = by_reservation.get(id) else {
            found.push(format!(
                "{TOLD}: reservation {id} was answered to a hold and is not in the table"
            ));
            continue;
        };
        if row.user_id != told.user_id
            || row.schedule_id != told.schedule_id
            || row.seat_no != told.seat_no
        {
            found.push(format!(
                "{TOLD}: reservation {id} is user {} schedule {} seat {}, \
                 the hold answered user {} schedule {} seat {}",
                row.user_id,
                row.schedule_id,
                row.seat_no,
                told.user_id,
                told.schedule_id,
                told.seat_no
            ));
        }
        if told.cancelled && row.status != "CANCELLED" {
            found.push(format!(
                "{TOLD}: reservation {id} was answered cancelled and is {}",
                row.status
            ));
        }
        if told.paid && !told.cancel_sent && row.status != "CONFIRMED" {
            found.push(format!(
                "{TOLD}: reservation {id} was answered paid, never cancelled, and is {}",
                row.status
            ));
        }
    }
    let acked = lock(&shared.acked).clone();
    for told in &acked {
        match by_id.get(&told.transaction_id) {
            Some((user_id, kind)) if *user_id == told.user_id && kind == told.kind => {}
            other => found.push(format!(
                "{TOLD}: {} of user {} under key {} answered transaction {}, the ledger has {:?}",
                told.kind, told.user_id, told.key, told.transaction_id, other
            )),
        }
    }
    Ok(found)
}
