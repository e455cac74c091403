//! Writing a batch with several workers at once. The batch (orders and commands) is split by
//! product, carts keeping their products together (split.rs), so workers of one consumer
//! never wait for each other's row locks; each part is one transaction, retried until it
//! commits. Commands whose order is unknown are parked in a transaction of their own.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::join_all;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use orderflow_common::command::{Inbound, ValidCommand};
use orderflow_common::errors::Chain;
use orderflow_common::events::OrderEvent;
use orderflow_common::log_limit::{self, LogLimiter};
use orderflow_common::order::{Line, ValidOrder};

use crate::concurrency::PartLimit;
use crate::lifecycle::Step;
use crate::protocol_trace::{self, Step as TraceStep};
use crate::reservation::{self, Applied, ErrorClass, LaneLocks, LifecycleSettings, Locking, Part, PartResult, ReserveError, Touches};
use crate::split::Layout;
use crate::stats::Stats;
use crate::stuck::StuckWrites;

/// The batch was given up at shutdown; parts may have committed, none of its offsets are.
#[derive(Debug, thiserror::Error)]
#[error("batch abandoned at shutdown before it was fully written")]
pub struct Abandoned;

pub struct WorkerPool {
    pool: Pool,
    /// Parts per batch: WORKERS at most, fewer while this consumer meets lock conflicts.
    parts: PartLimit,
    stats: Arc<Stats>,
    stuck: Arc<StuckWrites>,
    permanent_retry: Duration,
    lifecycle: LifecycleSettings,
    /// The cap of the jittered backoff after a lock conflict.
    conflict_backoff_max: Duration,
    /// Until when (ms since the Unix epoch) parts start with `Locking::Available`: set by
    /// every lock conflict this consumer meets (see `write_part`).
    contended_until: AtomicU64,
    /// Whether contended batches are split in lanes (split.rs) and take lane locks
    /// (reservation.rs), rather than split for balance and left to NOWAIT and backoff.
    lanes: bool,
}

/// How long one lock conflict keeps this consumer's parts on SKIP LOCKED from their first
/// attempt. Other consumers' batches come every few hundred ms while they contend at all.
const CONTENDED_FOR: Duration = Duration::from_secs(5);

/// A written batch: what it did, the events to publish before its offsets move, and how
/// many events its transactions left in the outbox.
#[derive(Debug, Default)]
pub struct Written {
    pub applied: Applied,
    pub events: Vec<OrderEvent>,
    pub outbox: usize,
}

/// Transient retries: one warning per SQLSTATE (or "connection") per 10 s.
static TRANSIENT_LOGS: LogLimiter = LogLimiter::new(log_limit::EVERY);
/// Permanent errors: an ERROR on about every slow retry, but never more than one per 10 s.
static PERMANENT_LOGS: LogLimiter = LogLimiter::new(log_limit::EVERY);

/// Where each command's order is, for commands whose order is not in the batch: its product,
/// or every product of a cart's lines. An order's products never change, so this needs no
/// lock.
const LOCATE_ORDERS: &str = "SELECT o.order_id, \
            CASE WHEN o.line_count = 1 THEN ARRAY[o.product_id] \
                 ELSE ARRAY(SELECT l.product_id FROM order_lines l WHERE l.order_id = o.order_id ORDER BY l.line_no) END \
     FROM orders o WHERE o.order_id = ANY($1)";

/// The default hold and events on: what the consumer runs with unless configured.
pub const DEFAULT_LIFECYCLE: LifecycleSettings = LifecycleSettings { default_hold_seconds: 900, events: true };

impl WorkerPool {
    pub fn new(pool: Pool, workers: usize, stats: Arc<Stats>) -> Self {
        let permanent_retry = Duration::from_millis(crate::settings::BatchSettings::default().permanent_retry_ms);
        Self { pool, parts: PartLimit::new(workers, true), stats, stuck: Arc::default(), permanent_retry, lifecycle: DEFAULT_LIFECYCLE, conflict_backoff_max: Duration::from_millis(250), contended_until: AtomicU64::new(0), lanes: true }
    }

    /// Where permanent errors are reported (for /ready), and how often they are retried.
    pub fn with_permanent_errors(self, stuck: Arc<StuckWrites>, permanent_retry: Duration) -> Self {
        Self { stuck, permanent_retry, ..self }
    }

    pub fn with_conflict_backoff_max(self, conflict_backoff_max: Duration) -> Self {
        Self { conflict_backoff_max, ..self }
    }

    /// `false`: every batch is split into up to WORKERS parts, conflicts or not.
    pub fn with_adaptive_parts(self, adaptive: bool) -> Self {
        let max = self.parts.max();
        Self { parts: PartLimit::new(max, adaptive), ..self }
    }

    /// `false`: contended batches too are split for balance and take no lane locks.
    pub fn with_lanes(self, lanes: bool) -> Self {
        Self { lanes, ..self }
    }

    pub fn with_lifecycle(self, lifecycle: LifecycleSettings) -> Self {
        Self { lifecycle, ..self }
    }

    /// How many parts the next batch may be split into (concurrency.rs).
    pub fn parts(&self) -> usize {
        self.parts.parts()
    }

    pub fn lifecycle(&self) -> LifecycleSettings {
        self.lifecycle
    }

    /// Writes every message. Returns only when all parts committed, or with `Abandoned` once
    /// `abandon` fires; no error drops a message, they differ only in how they are retried.
    pub async fn write(&self, messages: &[Inbound], abandon: &CancellationToken) -> Result<Written, Abandoned> {
        let (items, duplicates) = unique(messages);
        // Commands whose order is not in the batch: where is it? (Orders are never deleted,
        // and an order's product never changes, so the answer cannot go stale.)
        let elsewhere: Vec<Uuid> = {
            let in_batch: HashSet<Uuid> = items.iter().filter_map(Item::placed).collect();
            items.iter().filter_map(Item::command).map(|c| c.order_id).filter(|id| !in_batch.contains(id)).collect()
        };
        let located = if elsewhere.is_empty() {
            HashMap::new()
        } else {
            self.retrying(None, elsewhere.len(), abandon, || locate(&self.pool, &elsewhere)).await?.0
        };
        let layout = self.layout();
        let lane_locks = match layout {
            Layout::Lanes { lanes, .. } => Some(LaneLocks { lanes }),
            Layout::Balanced { .. } => None,
        };
        let (parts, parked) = plan(&items, &located, layout);
        // The parking transaction is the last part in the protocol trace.
        let park_index = parts.len();
        let writes = parts.iter().enumerate().map(|(index, part)| self.write_part(index, part, lane_locks, abandon));
        let park = async {
            if parked.is_empty() {
                return Ok((PartResult::default(), 0));
            }
            committed(park_index, self.retrying(Some(park_index), parked.len(), abandon, || reservation::park(&self.pool, &parked, &self.lifecycle))).await
        };
        let (results, parked) = tokio::join!(join_all(writes), park);
        let mut written = Written { applied: Applied { already_applied: duplicates, ..Applied::default() }, ..Written::default() };
        for result in results.into_iter().chain(std::iter::once(parked)) {
            let (part, conflicts) = result?;
            written.applied += part.applied;
            written.applied.lock_conflicts += conflicts;
            written.events.extend(part.events);
            written.outbox += part.outbox;
        }
        self.parts.observe(written.applied.lock_conflicts);
        Ok(written)
    }

    /// Writes one part: all of it under NOWAIT locks. After a lock conflict (another
    /// consumer's transaction holds some of its rows), each attempt takes the rows that are
    /// free and writes the components they cover, until none is left (`Locking::Available`).
    /// Each of those commits is one `PartCommitted` of part `index` in the protocol trace.
    ///
    /// While this consumer meets conflicts (within CONTENDED_FOR of the last), parts start
    /// with `Available`: a NOWAIT attempt that fails has locked, and written to, every row
    /// before the held one, and rolls it all back. With 4 consumers on the 100,000-product
    /// catalog, NOWAIT first gave 12,278/s and this 28,526/s (README, Scaling). A single
    /// consumer never conflicts and always takes its locks NOWAIT.
    async fn write_part(&self, index: usize, part: &Part<'_>, lane_locks: Option<LaneLocks>, abandon: &CancellationToken) -> Result<(PartResult, u64), Abandoned> {
        let mut total = PartResult::default();
        let mut conflicts = 0;
        let mut rest = None;
        let mut locking = if self.contended() { Locking::Available } else { Locking::All };
        loop {
            let current = rest.as_ref().unwrap_or(part);
            let ((mut done, left), met) = self
                .retrying(Some(index), current.steps.len(), abandon, || {
                    reservation::apply_with(&self.pool, current, &self.lifecycle, std::mem::replace(&mut locking, Locking::Available), lane_locks)
                })
                .await?;
            // Waiting for a lane another consumer held is contention too, though it costs no
            // conflict: without this the consumer would leave its lanes CONTENDED_FOR after
            // its last conflict and meet the other consumers on the rows again.
            if done.waited_for_lanes {
                self.mark_contended();
            }
            if let Some(trace) = done.trace.take() {
                protocol_trace::record(|| trace.part_committed(index));
            }
            conflicts += met;
            if met > 0 || left.is_some() {
                self.mark_contended();
            }
            total.applied += done.applied;
            total.events.extend(done.events);
            total.outbox += done.outbox;
            match left {
                None => return Ok((total, conflicts)),
                Some(left) => {
                    // Part of it went ahead; the rest met rows held elsewhere.
                    conflicts += 1;
                    self.stats.record_lock_conflict();
                    rest = Some(left);
                }
            }
        }
    }

    /// Balanced while this consumer meets no conflicts; in lanes while it does (split.rs).
    fn layout(&self) -> Layout {
        let parts = self.parts.parts();
        if self.lanes && self.contended() {
            Layout::Lanes { lanes: self.parts.max(), parts }
        } else {
            Layout::Balanced { parts }
        }
    }

    fn contended(&self) -> bool {
        self.contended_until.load(Ordering::Relaxed) > epoch_ms()
    }

    fn mark_contended(&self) {
        self.contended_until.fetch_max(epoch_ms() + CONTENDED_FOR.as_millis() as u64, Ordering::Relaxed);
    }

    /// Runs `attempt` until it succeeds, or until `abandon` fires; returns its result and the
    /// number of lock conflicts it met. `size` (messages) is for the logs; `part`, the index
    /// of the part it writes, for the protocol trace.
    async fn retrying<T, F, Fut>(&self, part: Option<usize>, size: usize, abandon: &CancellationToken, mut attempt: F) -> Result<(T, u64), Abandoned>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ReserveError>>,
    {
        let mut attempts = 0_u32;
        let mut conflicts = 0;
        // Set while this part is stuck on a permanent error; dropped when it gets through.
        let mut stuck = None;
        loop {
            let error = match attempt().await {
                Ok(done) => {
                    if stuck.is_some() {
                        tracing::info!(attempt = attempts, messages = size, "write went through after permanent errors");
                    }
                    return Ok((done, conflicts));
                }
                Err(error) => error,
            };
            attempts += 1;
            if let Some(part) = part {
                protocol_trace::record(|| TraceStep::PartFailed { part, conflict: error.class() == ErrorClass::Conflict });
            }
            let cause = match error.class() {
                ErrorClass::Conflict => "lock_conflict",
                ErrorClass::Transient => "database_error",
                ErrorClass::Permanent => "permanent",
            };
            let pause = match error.class() {
                ErrorClass::Conflict => {
                    conflicts += 1;
                    self.stats.record_lock_conflict();
                    tracing::debug!(attempt = attempts, %error, "retrying after conflict");
                    backoff(attempts, Duration::from_millis(2), self.conflict_backoff_max)
                }
                ErrorClass::Transient => {
                    self.stats.record_database_error();
                    let kind = error.sqlstate().map_or("connection", |code| code.code());
                    if let Some(suppressed) = TRANSIENT_LOGS.allow(kind) {
                        tracing::warn!(attempt = attempts, error = %Chain(&error), messages = size, suppressed, "write failed, retrying");
                    }
                    backoff(attempts, Duration::from_millis(100), Duration::from_secs(5))
                }
                ErrorClass::Permanent => {
                    // The part keeps its messages: the offsets of this batch are not
                    // committed, so nothing behind it is skipped, and fixing the schema or
                    // constraint lets it continue by itself.
                    let sqlstate = error.sqlstate().map_or("none", |code| code.code()).to_owned();
                    stuck.get_or_insert_with(|| self.stuck.enter());
                    self.stuck.report(Chain(&error).to_string(), &sqlstate, size);
                    self.stats.record_permanent_error(&sqlstate);
                    if let Some(suppressed) = PERMANENT_LOGS.allow(&sqlstate) {
                        tracing::error!(
                            attempt = attempts,
                            error = %Chain(&error),
                            sqlstate,
                            messages = size,
                            retry_in_ms = self.permanent_retry.as_millis() as u64,
                            suppressed,
                            "write failed with a permanent error; the batch waits and is retried slowly"
                        );
                    }
                    self.permanent_retry
                }
            };
            // Time spent waiting, by cause: the benchmark's scaling breakdown reads it to tell
            // backoff after lock conflicts from time spent writing.
            metrics::counter!("consumer_backoff_microseconds_total", "cause" => cause).increment(pause.as_micros() as u64);
            tokio::select! {
                _ = abandon.cancelled() => return Err(Abandoned),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Records a part's commit in the protocol trace as soon as its transaction returns.
async fn committed(
    index: usize,
    write: impl Future<Output = Result<(PartResult, u64), Abandoned>>,
) -> Result<(PartResult, u64), Abandoned> {
    let mut result = write.await;
    if let Ok((part, _)) = &mut result {
        if let Some(trace) = part.trace.take() {
            protocol_trace::record(|| trace.part_committed(index));
        }
    }
    result
}

async fn locate(pool: &Pool, order_ids: &[Uuid]) -> Result<HashMap<Uuid, Vec<String>>, ReserveError> {
    let client = pool.get().await?;
    let query = client.prepare_cached(LOCATE_ORDERS).await?;
    Ok(client.query(&query, &[&order_ids]).await?.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// One message of the batch, after duplicates are dropped. Public, with `unique` and `plan`,
/// for the model checker (orderflow-model), which runs the same dedup and split.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    Place(&'a ValidOrder),
    Command(&'a ValidCommand),
}

impl<'a> From<&'a Inbound> for Item<'a> {
    fn from(message: &'a Inbound) -> Self {
        match message {
            Inbound::Order(order) => Self::Place(order),
            Inbound::Command(command) => Self::Command(command),
        }
    }
}

impl<'a> Item<'a> {
    fn placed(&self) -> Option<Uuid> {
        match self {
            Self::Place(order) => Some(order.order_id),
            Self::Command(_) => None,
        }
    }

    fn command(&self) -> Option<&'a ValidCommand> {
        match self {
            Self::Place(_) => None,
            Self::Command(command) => Some(command),
        }
    }
}

/// A redelivery inside one batch carries the same order_id (or command_id) twice; the first
/// one wins. Returns the rest in batch order, and how many were dropped.
pub fn unique(messages: &[Inbound]) -> (Vec<Item<'_>>, u64) {
    let mut orders = HashSet::with_capacity(messages.len());
    let mut commands = HashSet::new();
    let items: Vec<Item<'_>> = messages
        .iter()
        .filter_map(|message| match message {
            Inbound::Order(order) => orders.insert(order.order_id).then_some(Item::Place(order)),
            Inbound::Command(command) => commands.insert(command.command_id).then_some(Item::Command(command)),
        })
        .collect();
    let dropped = (messages.len() - items.len()) as u64;
    (items, dropped)
}

/// Splits the batch into parts by product (`split::split`: a cart's products, and a cart
/// command's, stay in one part) and orders each part's steps: batch order, except that a
/// command whose order comes later in the batch (another partition: Kafka orders nothing
/// across partitions) goes right after that order, so a command is never applied before the
/// placement it acts on. A command acts on every product of its order, so a command for a
/// cart locks all of the cart's products. Commands whose order is neither in the batch nor
/// in `located` come back apart, to be parked.
pub fn plan<'a>(items: &[Item<'a>], located: &'a HashMap<Uuid, Vec<String>>, layout: Layout) -> (Vec<Part<'a>>, Vec<&'a ValidCommand>) {
    let placed: HashMap<Uuid, (usize, &'a [Line])> = items
        .iter()
        .enumerate()
        .filter_map(|(index, item)| match item {
            Item::Place(order) => Some((order.order_id, (index, order.lines()))),
            Item::Command(_) => None,
        })
        .collect();
    let mut sequence: Vec<(Touches<'a>, Step<'a>)> = Vec::with_capacity(items.len());
    let mut deferred: HashMap<Uuid, Vec<&'a ValidCommand>> = HashMap::new();
    let mut parked = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match *item {
            Item::Place(order) => {
                let products = Touches::Lines(order.lines());
                sequence.push((products, Step::Place(order)));
                for command in deferred.remove(&order.order_id).into_iter().flatten() {
                    sequence.push((products, Step::Command { command, parked: false }));
                }
            }
            Item::Command(command) => match placed.get(&command.order_id) {
                Some(&(at, _)) if at > index => deferred.entry(command.order_id).or_default().push(command),
                Some(&(_, lines)) => sequence.push((Touches::Lines(lines), Step::Command { command, parked: false })),
                None => match located.get(&command.order_id) {
                    Some(products) => sequence.push((Touches::Located(products), Step::Command { command, parked: false })),
                    None => parked.push(command),
                },
            },
        }
    }
    debug_assert!(deferred.is_empty(), "every deferred command follows its placement");
    let parts = crate::split::split(&sequence, layout, |(products, _)| products.iter())
        .into_iter()
        .map(|group| {
            let (touches, steps) = group.into_iter().unzip();
            Part::new(steps, touches)
        })
        .collect();
    (parts, parked)
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Exponential backoff with full jitter: spreads retries of competing consumers apart.
fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base.saturating_mul(2_u32.saturating_pow(attempt.min(16))).min(cap);
    rand::rng().random_range(Duration::ZERO..=ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use orderflow_common::command::CommandKind;
    use orderflow_common::order::Lines;

    fn order(product: &str) -> ValidOrder {
        ValidOrder {
            order_id: Uuid::now_v7(),
            customer_id: "C".into(),
            lines: Lines::One(Line { product_id: product.into(), quantity: 1, amount_cents: 100 }),
            placed_at: Utc::now(),
            hold_seconds: None,
        }
    }

    #[test]
    fn duplicates_inside_a_batch_are_dropped() {
        let first = order("P");
        let cancel = command(&first, CommandKind::Cancel);
        let messages: Vec<Inbound> = vec![
            Inbound::Order(first.clone()),
            Inbound::Order(order("P")),
            Inbound::Order(first),
            Inbound::Command(cancel.clone()),
            Inbound::Command(cancel),
        ];
        let (items, dropped) = unique(&messages);
        assert_eq!((items.len(), dropped), (3, 2));
    }

    fn command(order: &ValidOrder, kind: CommandKind) -> ValidCommand {
        ValidCommand { kind, command_id: Uuid::now_v7(), order_id: order.order_id, customer_id: order.customer_id.clone(), issued_at: Utc::now() }
    }

    fn steps<'a>(part: &Part<'a>) -> Vec<String> {
        part.steps
            .iter()
            .map(|step| match step {
                Step::Place(o) => format!("place {}", o.order_id),
                Step::Command { command, .. } => format!("{} {}", command.kind.as_str(), command.order_id),
            })
            .collect()
    }

    #[test]
    fn commands_go_to_their_orders_part_after_the_order_and_unknown_ones_are_parked() {
        let (a, b, elsewhere) = (order("A"), order("B"), order("C"));
        let (cancel_a, confirm_b, confirm_elsewhere) =
            (command(&a, CommandKind::Cancel), command(&b, CommandKind::Confirm), command(&elsewhere, CommandKind::Confirm));
        let stranger = ValidCommand { order_id: Uuid::now_v7(), ..command(&a, CommandKind::Cancel) };
        // confirm_b arrives before b (another partition): it must still come after it.
        let items = [
            Item::Place(&a),
            Item::Command(&confirm_b),
            Item::Command(&cancel_a),
            Item::Command(&confirm_elsewhere),
            Item::Command(&stranger),
            Item::Place(&b),
        ];
        let located: HashMap<Uuid, Vec<String>> = [(elsewhere.order_id, vec!["A".to_owned()])].into();
        let (parts, parked) = plan(&items, &located, Layout::Balanced { parts: 4 });
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].command_id, stranger.command_id);
        let part_a = parts.iter().find(|p| p.products == ["A"]).expect("a part for A");
        assert_eq!(steps(part_a), [format!("place {}", a.order_id), format!("cancel {}", a.order_id), format!("confirm {}", elsewhere.order_id)]);
        let part_b = parts.iter().find(|p| p.products == ["B"]).expect("a part for B");
        assert_eq!(steps(part_b), [format!("place {}", b.order_id), format!("confirm {}", b.order_id)]);
    }

    #[test]
    fn a_carts_command_goes_to_the_part_holding_all_its_products() {
        let cart = ValidOrder {
            lines: Lines::Cart(vec![
                Line { product_id: "A".into(), quantity: 1, amount_cents: 1 },
                Line { product_id: "B".into(), quantity: 1, amount_cents: 1 },
            ]),
            ..order("A")
        };
        let (c, d, stored) = (order("C"), order("D"), order("X"));
        let (cancel_cart, confirm_stored) = (command(&cart, CommandKind::Cancel), command(&stored, CommandKind::Confirm));
        // The stored order is a cart over C and D (located in order_lines): its command
        // links C and D, and must lock both.
        let located: HashMap<Uuid, Vec<String>> = [(stored.order_id, vec!["C".to_owned(), "D".to_owned()])].into();
        let items = [Item::Command(&cancel_cart), Item::Place(&c), Item::Place(&cart), Item::Place(&d), Item::Command(&confirm_stored)];
        let (parts, parked) = plan(&items, &located, Layout::Balanced { parts: 4 });
        assert!(parked.is_empty());
        let part_ab = parts.iter().find(|p| p.products == ["A", "B"]).expect("the cart's part locks A and B");
        assert_eq!(steps(part_ab), [format!("place {}", cart.order_id), format!("cancel {}", cart.order_id)]);
        let part_cd = parts.iter().find(|p| p.products == ["C", "D"]).expect("the stored cart's command joins C and D");
        assert_eq!(steps(part_cd), [format!("place {}", c.order_id), format!("place {}", d.order_id), format!("confirm {}", stored.order_id)]);
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn backoff_stays_under_its_cap() {
        for attempt in 0..40 {
            assert!(backoff(attempt, Duration::from_millis(2), Duration::from_millis(250)) <= Duration::from_millis(250));
        }
    }
}
