//! The expiry sweeper, a supervised task of every consumer. About every second it
//! - releases every hold past its deadline, set-based: the products with holds due are
//!   locked (sorted, NOWAIT, one lock per product), then one UPDATE expires all their due
//!   holds (up to SWEEP_MAX_ROWS per transaction) and one UPDATE gives the units back;
//! - applies parked commands whose order has arrived meanwhile (an order placed by another
//!   consumer while the command was being parked);
//! - refuses parked commands older than PARKED_COMMAND_TTL_SECONDS whose order never came.
//!
//! Events of all three go to the outbox in the same transaction. Exactly once, with any
//! number of consumers and across crashes: an order is expired only by a transaction that
//! holds its product's lock and still finds it `reserved`; every other writer of an order's
//! status holds that lock too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rand::Rng;
use tokio_postgres::IsolationLevel;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use orderflow_common::command::{CommandKind, ValidCommand};
use orderflow_common::errors::Chain;
use orderflow_common::log_limit::{self, LogLimiter};

use crate::events::{self, CommandOutcome};
use crate::lifecycle::{is_due, Change, Hold, Refusal, Status, Step, StockDelta};
use crate::outbox::{self, Relay};
use crate::protocol_trace::{self, Effect, Effects};
use crate::reservation::{self, ErrorClass, LifecycleSettings, Part, ReserveError, Touches};
use crate::stats::Stats;

#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    pub interval: Duration,
    /// Most holds one transaction expires.
    pub max_rows: i64,
    /// How long a command may wait for its order before it is refused `unknown_order`.
    pub parked_ttl: Duration,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self { interval: Duration::from_secs(1), max_rows: 100_000, parked_ttl: Duration::from_secs(3600) }
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: u64,
    /// Committed expiry transactions.
    pub transactions: u64,
    /// Attempts that found a product row locked (retried).
    pub conflicts: u64,
    /// Parked commands decided because their order had arrived.
    pub parked_decided: u64,
    /// Parked commands refused `unknown_order`.
    pub parked_refused: u64,
}

/// Products per expiry transaction: all due holds of these are released together.
const PRODUCTS_PER_SWEEP: i64 = 1_000;
/// Lock conflicts one sweep waits out before leaving the rest to the next tick.
const MAX_CONFLICTS: u32 = 50;

/// The products of due holds: a single-line order's product, every line's product of a cart.
const DUE_PRODUCTS: &str = "SELECT product_id FROM ( \
         SELECT DISTINCT product_id FROM orders \
          WHERE status = 'reserved' AND expires_at <= now() AND product_id IS NOT NULL \
         UNION \
         SELECT l.product_id FROM orders o JOIN order_lines l USING (order_id) \
          WHERE o.status = 'reserved' AND o.expires_at <= now() AND o.line_count > 1) AS due \
     ORDER BY product_id LIMIT $1";

/// The status check runs under the product locks: a hold another transaction ended (or
/// expired) meanwhile is no longer `reserved` and is skipped. A cart is expired only when
/// every one of its lines' products is among the locked ones (its lines move together);
/// otherwise a later transaction that locks them all takes it. Its lines come back with it.
const EXPIRE: &str = "UPDATE orders AS o SET status = 'expired', reason = 'hold_expired', status_changed_at = $1 \
     WHERE o.order_id IN (SELECT d.order_id FROM orders d \
                          WHERE d.status = 'reserved' AND d.expires_at <= $1 \
                            AND (d.product_id = ANY($2) \
                                 OR (d.line_count > 1 AND EXISTS (SELECT 1 FROM order_lines l \
                                                                  WHERE l.order_id = d.order_id AND l.product_id = ANY($2)))) \
                          ORDER BY d.expires_at LIMIT $3) \
       AND o.status = 'reserved' \
       AND (o.line_count = 1 OR NOT EXISTS (SELECT 1 FROM order_lines l \
                                            WHERE l.order_id = o.order_id AND NOT l.product_id = ANY($2))) \
     RETURNING o.order_id, o.customer_id, o.product_id, o.quantity, o.expires_at, \
            CASE WHEN o.line_count > 1 THEN ARRAY(SELECT l.product_id FROM order_lines l WHERE l.order_id = o.order_id ORDER BY l.line_no) END, \
            CASE WHEN o.line_count > 1 THEN ARRAY(SELECT l.quantity FROM order_lines l WHERE l.order_id = o.order_id ORDER BY l.line_no) END";

/// With every product the command's order touches (all of a cart's lines).
const PARKED_WITH_ORDER: &str = "SELECT c.command_id, c.order_id, c.customer_id, c.kind, c.issued_at, \
            CASE WHEN o.line_count = 1 THEN ARRAY[o.product_id] \
                 ELSE ARRAY(SELECT l.product_id FROM order_lines l WHERE l.order_id = o.order_id) END \
     FROM order_commands c JOIN orders o USING (order_id) \
     WHERE c.outcome = 'pending' ORDER BY c.received_at, c.command_id LIMIT 1000";

const REFUSE_STALE: &str = "UPDATE order_commands AS c SET outcome = 'refused', reason = 'unknown_order', decided_at = now() \
     WHERE c.command_id IN (SELECT command_id FROM order_commands \
                            WHERE outcome = 'pending' AND received_at <= now() - make_interval(secs => $1) LIMIT 10000) \
       AND c.outcome = 'pending' \
       AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.order_id = c.order_id) \
     RETURNING c.command_id, c.kind, c.order_id, c.customer_id, c.decided_at";

/// The sweeper's rule, pure (the statements above carry it out set-based, the model checker
/// calls it): a hold is expired by a transaction that holds the locks of `locked` when it is
/// due at `now` and every one of its lines' products is locked (a cart's lines move together).
pub fn expirable(hold: &Hold, locked: &[&str], now: DateTime<Utc>) -> bool {
    is_due(hold.status, hold.expires_at, now) && hold.lines.iter().all(|line| locked.contains(&line.product_id.as_str()))
}

/// The products a sweep locks (`DUE_PRODUCTS`): every line's product of every due hold,
/// sorted and unique, as `reservation::lock_products` takes them.
pub fn due_products<'a>(holds: impl IntoIterator<Item = &'a Hold>, now: DateTime<Utc>) -> Vec<&'a str> {
    let mut products: Vec<&str> = holds
        .into_iter()
        .filter(|hold| is_due(hold.status, hold.expires_at, now))
        .flat_map(|hold| hold.lines.iter().map(|line| line.product_id.as_str()))
        .collect();
    products.sort_unstable();
    products.dedup();
    products
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("expiry failed")]
    Reserve(#[from] ReserveError),
}

impl From<tokio_postgres::Error> for SweepError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Reserve(error.into())
    }
}

impl From<deadpool_postgres::PoolError> for SweepError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Self::Reserve(error.into())
    }
}

pub struct Sweeper {
    pool: Pool,
    settings: SweepSettings,
    lifecycle: LifecycleSettings,
    relay: Option<Arc<Relay>>,
    stats: Arc<Stats>,
    /// Products whose holds cannot be expired (a permanent error, such as a CHECK the
    /// release would break), and until when sweeps leave them out. One such product used to
    /// fail every sweep transaction it was in, and so stopped the expiry of every product
    /// (found by a benchmark: 40,011 holds of other products never expired).
    quarantine: Mutex<HashMap<String, Instant>>,
}

/// How long a product that failed permanently is left out before it is tried again (an
/// operator may have fixed its row meanwhile).
const QUARANTINE: Duration = Duration::from_secs(60);

static SWEEP_ERRORS: LogLimiter = LogLimiter::new(log_limit::EVERY);
static QUARANTINE_ERRORS: LogLimiter = LogLimiter::new(log_limit::EVERY);

impl Sweeper {
    pub fn new(pool: Pool, settings: SweepSettings, lifecycle: LifecycleSettings, relay: Option<Arc<Relay>>, stats: Arc<Stats>) -> Self {
        Self { pool, settings, lifecycle, relay, stats, quarantine: Mutex::default() }
    }

    /// Leaves out the products in quarantine; forgets those whose time is up.
    fn without_quarantined(&self, products: &mut Vec<String>) {
        let mut quarantine = self.quarantine.lock().expect("quarantine lock poisoned");
        let now = Instant::now();
        quarantine.retain(|_, until| *until > now);
        products.retain(|product| !quarantine.contains_key(product));
        metrics::gauge!("expiry_quarantined_products").set(quarantine.len() as f64);
    }

    /// After a permanent error on `products`: each alone, to find which fail. Those go into
    /// quarantine, loudly; the others' single-line holds expire on the way. Carts wait for the
    /// next pass, which locks all their products together again, without the quarantined ones.
    async fn isolate(&self, products: &[String], error: &ReserveError, report: &mut SweepReport) {
        for product in products {
            match self.expire(std::slice::from_ref(product)).await {
                Ok(expired) => {
                    report.expired += expired;
                    report.transactions += 1;
                    self.stats.record_expired(expired);
                }
                Err(alone) if alone.class() == ErrorClass::Permanent => {
                    let sqlstate = alone.sqlstate().map_or("none", |code| code.code()).to_owned();
                    if let Some(suppressed) = QUARANTINE_ERRORS.allow(&sqlstate) {
                        tracing::error!(
                            product = %product,
                            error = %Chain(&alone),
                            sqlstate,
                            retry_in_s = QUARANTINE.as_secs(),
                            suppressed,
                            "the holds of this product cannot be expired; it is left out of sweeps meanwhile (check its inventory row against its reserved orders)"
                        );
                    }
                    metrics::counter!("expiry_quarantines_total").increment(1);
                    self.quarantine.lock().expect("quarantine lock poisoned").insert(product.clone(), Instant::now() + QUARANTINE);
                }
                // A conflict or the database away: the next pass or tick tries it again.
                Err(_) => {}
            }
        }
        tracing::debug!(error = %Chain(error), products = products.len(), "sweep transaction failed permanently; products tried one by one");
    }

    /// Sweeps every `interval` until `shutdown`. Errors (the database away) are logged and
    /// the next tick tries again; the task itself never ends on its own.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.sweep().await {
                Ok(report) if report != SweepReport::default() => tracing::debug!(?report, "sweep done"),
                Ok(_) => {}
                Err(error) => {
                    if let Some(suppressed) = SWEEP_ERRORS.allow("sweep") {
                        tracing::warn!(error = %Chain(&error), suppressed, "expiry sweep failed; retried at the next tick");
                    }
                }
            }
        }
    }

    /// One sweep: expire what is due, decide parked commands. Relays the outbox after.
    pub async fn sweep(&self) -> Result<SweepReport, SweepError> {
        let mut report = self.expire_due().await?;
        let (decided, refused) = (self.decide_parked().await?, self.refuse_stale().await?);
        report.parked_decided = decided;
        report.parked_refused = refused;
        if self.lifecycle.events && report.expired + decided + refused > 0 {
            outbox::after_commit(self.relay.as_deref()).await;
        }
        Ok(report)
    }

    /// Releases every hold past its deadline, in as few transactions as the row cap allows.
    pub async fn expire_due(&self) -> Result<SweepReport, SweepError> {
        let mut report = SweepReport::default();
        let mut conflicts = 0_u32;
        let mut isolations = 0_u32;
        loop {
            let mut products: Vec<String> = {
                let client = self.pool.get().await?;
                let query = client.prepare_cached(DUE_PRODUCTS).await?;
                client.query(&query, &[&PRODUCTS_PER_SWEEP]).await?.iter().map(|row| row.get(0)).collect()
            };
            self.without_quarantined(&mut products);
            if products.is_empty() {
                return Ok(report);
            }
            match self.expire(&products).await {
                Ok(expired) => {
                    report.expired += expired;
                    report.transactions += 1;
                    self.stats.record_expired(expired);
                    metrics::counter!("expiry_transactions_total").increment(1);
                    // Nothing expired although products were due: the rest are carts whose
                    // products reach past this list; the next tick takes them.
                    if expired == 0 || (expired < self.settings.max_rows as u64 && (products.len() as i64) < PRODUCTS_PER_SWEEP) {
                        return Ok(report);
                    }
                }
                Err(error) if error.class() == ErrorClass::Conflict => {
                    conflicts += 1;
                    report.conflicts += 1;
                    self.stats.record_lock_conflict();
                    if conflicts >= MAX_CONFLICTS {
                        return Ok(report);
                    }
                    let ceiling = Duration::from_millis(2).saturating_mul(2_u32.pow(conflicts.min(7))).min(Duration::from_millis(250));
                    let pause = rand::rng().random_range(Duration::ZERO..=ceiling);
                    tokio::time::sleep(pause).await;
                }
                // Bounded: a failure that no single product shows (a cart over several)
                // would otherwise send this loop round forever.
                Err(error) if error.class() == ErrorClass::Permanent && isolations < 3 => {
                    isolations += 1;
                    self.isolate(&products, &error, &mut report).await;
                    if products.len() == 1 {
                        // It is in quarantine now (or expired alone after all): nothing
                        // else was due in this pass.
                        return Ok(report);
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// One transaction: lock `products` (sorted), expire their due holds, give the units back.
    async fn expire(&self, products: &[String]) -> Result<u64, ReserveError> {
        let mut client = self.pool.get().await?;
        let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
        let locked: Vec<&str> = products.iter().map(String::as_str).collect();
        let (_, now) = reservation::lock_products(&transaction, &locked).await?;
        let expire = transaction.prepare_cached(EXPIRE).await?;
        let rows = transaction.query(&expire, &[&now, &products, &self.settings.max_rows]).await?;
        let mut deltas: HashMap<String, StockDelta> = HashMap::new();
        let mut events = Vec::with_capacity(if self.lifecycle.events { rows.len() } else { 0 });
        for row in &rows {
            let order_id: Uuid = row.get(0);
            let hold = Hold { customer_id: row.get(1), lines: reservation::lines_of_row(row, 2, 5), status: Status::Reserved, expires_at: row.get(4) };
            debug_assert!(expirable(&hold, &locked, now), "the statement and the rule agree");
            // Per product, the sum over every line of the expired orders.
            for (product, delta) in hold.stock(Change::Expire) {
                debug_assert!(locked.contains(&product), "a cart is expired only with all its products locked");
                *deltas.entry(product.to_owned()).or_default() += delta;
            }
            if self.lifecycle.events {
                events.push(events::expired(order_id, &hold, now));
            }
        }
        reservation::move_stock(&transaction, &deltas).await?;
        outbox::write(&transaction, &events).await?;
        transaction.commit().await?;
        if !rows.is_empty() {
            protocol_trace::record(|| {
                let effects = rows.iter().map(|row| Effect { order_id: row.get(0), command_id: None, change: "expired".to_owned() }).collect();
                let outbox_events = events.iter().map(|e| e.event_id).collect();
                Effects { effects, stock: protocol_trace::stock_moves(&deltas), outbox_events, events: Vec::new() }.swept()
            });
        }
        Ok(rows.len() as u64)
    }

    /// Parked commands whose order exists by now: applied as a placement would have, in a
    /// part transaction of their own (events to the outbox).
    async fn decide_parked(&self) -> Result<u64, SweepError> {
        let rows = {
            let client = self.pool.get().await?;
            let query = client.prepare_cached(PARKED_WITH_ORDER).await?;
            client.query(&query, &[]).await?
        };
        if rows.is_empty() {
            return Ok(0);
        }
        let commands: Vec<(ValidCommand, Vec<String>)> = rows
            .iter()
            .map(|row| {
                let command = reservation::parked_command(row);
                (command, row.get(5))
            })
            .collect();
        let part = Part::new(
            commands.iter().map(|(command, _)| Step::Command { command, parked: true }).collect(),
            commands.iter().map(|(_, products)| Touches::Located(products)).collect(),
        );
        let mut conflicts = 0;
        loop {
            match reservation::apply(&self.pool, &part, &self.lifecycle).await {
                // Events of commands decided by someone else meanwhile were published by them.
                Ok(mut result) => {
                    if let Some(trace) = result.trace.take() {
                        protocol_trace::record(|| trace.swept());
                    }
                    self.stats.record_commands(&result.applied);
                    return Ok(result.applied.commands() - result.applied.parked);
                }
                Err(error) if error.class() == ErrorClass::Conflict && conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    self.stats.record_lock_conflict();
                    let pause = Duration::from_millis(rand::rng().random_range(1..=50));
                    tokio::time::sleep(pause).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Refuses parked commands whose order did not come within the TTL. A placement that
    /// applies such a command locks its row first (FOR UPDATE), so one of the two sees the
    /// other's decision and leaves the command alone.
    async fn refuse_stale(&self) -> Result<u64, SweepError> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let refuse = transaction.prepare_cached(REFUSE_STALE).await?;
        let rows = transaction.query(&refuse, &[&self.settings.parked_ttl.as_secs_f64()]).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut applied = reservation::Applied::default();
        let mut events = Vec::new();
        for row in &rows {
            let kind = CommandKind::parse(row.get(1)).expect("known kind");
            applied.record_refusal(kind, Refusal::UnknownOrder);
            if self.lifecycle.events {
                let customer_id: String = row.get(3);
                let decided_at: DateTime<Utc> = row.get(4);
                let outcome = CommandOutcome::Refused(Refusal::UnknownOrder.as_str());
                events.push(events::decided(row.get(0), kind, row.get(2), &customer_id, None, outcome, decided_at));
            }
        }
        outbox::write(&transaction, &events).await?;
        transaction.commit().await?;
        protocol_trace::record(|| {
            let effects = rows.iter().map(|row| Effect { order_id: row.get(2), command_id: Some(row.get(0)), change: "refused".to_owned() }).collect();
            Effects { effects, outbox_events: events.iter().map(|e| e.event_id).collect(), ..Effects::default() }.swept()
        });
        self.stats.record_commands(&applied);
        tracing::info!(refused = rows.len(), "parked commands refused: their orders never arrived");
        Ok(rows.len() as u64)
    }
}
