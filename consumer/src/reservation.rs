//! One transaction for a part of a batch (placements and commands of a set of products):
//! lock each product row once, read what exists, decide in memory (`lifecycle`), and write
//! orders, cart lines, commands and stock set-based, in a fixed number of statements
//! whatever the size. A cart's products are all in its part (worker_pool::plan), so its
//! lines are placed, confirmed, cancelled or expired together, under all their locks.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::IsolationLevel;
use uuid::Uuid;

use orderflow_common::command::{CommandKind, ValidCommand};
use orderflow_common::events::OrderEvent;
use orderflow_common::order::{Line, Lines, ValidOrder};

use crate::allocation::{Decision, RejectReason};
use crate::events::{self, CommandOutcome};
use crate::lifecycle::{Change, HeldLine, Hold, Ledger, Outcome, Refusal, Status, Step, StockDelta, Verdict};
use crate::outbox;
use crate::protocol_trace::{self, Effects};

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// Another transaction holds one of the product rows (SQLSTATE 55P03). Retry later.
    #[error("a product row is locked by another transaction")]
    LockConflict,
    /// An order we saw as new was inserted by someone else before our insert. Nothing was
    /// committed; a retry will see it as already applied.
    #[error("{0} orders were applied concurrently by another transaction")]
    ConcurrentlyApplied(usize),
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error")]
    Database(#[source] tokio_postgres::Error),
}

/// How a failed attempt is retried. The batch is never dropped: only how fast and how
/// loudly it is retried differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Another transaction got there first: retry soon.
    Conflict,
    /// The database is unreachable, overloaded, restarting or cancelled us: retry with
    /// backoff; it passes by itself.
    Transient,
    /// The same statement will fail the same way until someone changes the schema or the
    /// data (a CHECK violation, an undefined column): loud, and retried slowly.
    Permanent,
}

impl ReserveError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::LockConflict | Self::ConcurrentlyApplied(_) => ErrorClass::Conflict,
            Self::Pool(_) | Self::Database(_) => match self.sqlstate() {
                Some(code) => classify(code),
                // No SQLSTATE: I/O, a closed connection, a pool or connect timeout. (Rows are
                // read with `Row::get`, so a decoding mismatch panics instead of landing here.)
                None => ErrorClass::Transient,
            },
        }
    }

    pub fn sqlstate(&self) -> Option<&SqlState> {
        orderflow_common::errors::sqlstate(self)
    }
}

/// Transient SQLSTATE classes: 08 connection exception, 40 transaction rollback
/// (serialization failure, deadlock), 53 insufficient resources, 57 operator intervention
/// (admin shutdown, cannot connect now, query cancelled); 55P03 is a lock conflict. Anything
/// else is taken as permanent: retrying it quickly would only repeat it.
pub fn classify(code: &SqlState) -> ErrorClass {
    if *code == SqlState::LOCK_NOT_AVAILABLE {
        return ErrorClass::Conflict;
    }
    match code.code().get(..2) {
        Some("08" | "40" | "53" | "57") => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

impl From<tokio_postgres::Error> for ReserveError {
    fn from(error: tokio_postgres::Error) -> Self {
        if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            return Self::LockConflict;
        }
        Self::Database(error)
    }
}

/// What one committed transaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub reserved: u64,
    pub insufficient_stock: u64,
    pub unknown_product: u64,
    /// Orders and commands that were already in the database (redeliveries): left untouched.
    pub already_applied: u64,
    /// Attempts that hit a locked row and were retried.
    pub lock_conflicts: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Refused commands, by kind (confirm, cancel) and `Refusal` (see `refusal_index`).
    pub refused: [[u64; REFUSALS.len()]; 2],
    /// Commands whose order is not known yet: waiting in `order_commands`.
    pub parked: u64,
}

/// Every refusal, in the order of `Applied::refused`.
pub const REFUSALS: [Refusal; 5] =
    [Refusal::HoldExpired, Refusal::HoldCancelled, Refusal::AlreadyConfirmed, Refusal::OrderRejected, Refusal::UnknownOrder];

pub fn refusal_index(refusal: Refusal) -> usize {
    REFUSALS.iter().position(|r| *r == refusal).expect("every refusal is listed")
}

pub fn kind_index(kind: CommandKind) -> usize {
    match kind {
        CommandKind::Confirm => 0,
        CommandKind::Cancel => 1,
    }
}

impl Applied {
    pub fn rejected(&self) -> u64 {
        self.insufficient_stock + self.unknown_product
    }

    pub fn refusals(&self) -> u64 {
        self.refused.iter().flatten().sum()
    }

    /// Messages decided by this transaction (placements and commands), redeliveries excluded.
    pub fn commands(&self) -> u64 {
        self.confirmed + self.cancelled + self.refusals() + self.parked
    }

    pub fn record_refusal(&mut self, kind: CommandKind, refusal: Refusal) {
        self.refused[kind_index(kind)][refusal_index(refusal)] += 1;
    }
}

impl std::ops::AddAssign for Applied {
    fn add_assign(&mut self, other: Self) {
        self.reserved += other.reserved;
        self.insufficient_stock += other.insufficient_stock;
        self.unknown_product += other.unknown_product;
        self.already_applied += other.already_applied;
        self.lock_conflicts += other.lock_conflicts;
        self.confirmed += other.confirmed;
        self.cancelled += other.cancelled;
        self.expired += other.expired;
        for (mine, theirs) in self.refused.iter_mut().flatten().zip(other.refused.iter().flatten()) {
            *mine += theirs;
        }
        self.parked += other.parked;
    }
}

/// One worker's share of a batch: its steps in offset order (order_ids and command_ids
/// unique) and every product they touch, sorted.
#[derive(Debug, Default)]
pub struct Part<'a> {
    pub steps: Vec<Step<'a>>,
    /// The products each step touches, by index: what links steps into components when a
    /// conflict lets only some of them go ahead (`Locking::Available`).
    pub touches: Vec<Touches<'a>>,
    pub products: Vec<&'a str>,
}

/// The products a step touches: a placement's lines, or those of the order a command acts on
/// (from the batch, or located in the database).
#[derive(Debug, Clone, Copy)]
pub enum Touches<'a> {
    Lines(&'a [Line]),
    Located(&'a [String]),
}

impl<'a> Touches<'a> {
    pub fn iter(self) -> impl Iterator<Item = &'a str> {
        let (lines, located) = match self {
            Self::Lines(lines) => (lines, &[][..]),
            Self::Located(located) => (&[][..], located),
        };
        lines.iter().map(|line| line.product_id.as_str()).chain(located.iter().map(String::as_str))
    }
}

/// How a part's transaction takes its product locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locking {
    /// Every product of the part, NOWAIT: one row held by another transaction fails the
    /// attempt. The first attempt of every part; without contention the only one.
    All,
    /// After a conflict: the rows that are free now (SKIP LOCKED). The part's components whose
    /// rows were all taken go ahead in this transaction; the rest comes back to be retried.
    /// Without this, parts of several consumers on a wide catalog (each part touching
    /// thousands of products) almost always share a row, and each retried whole: measured with
    /// 4 consumers on 100,000 products, 1,148 conflicts and catalog at 0.27x of one consumer.
    Available,
}

#[derive(Debug, Clone, Copy)]
pub struct LifecycleSettings {
    /// The hold of orders that do not ask for one (RESERVATION_TTL_SECONDS).
    pub default_hold_seconds: u32,
    /// Whether events are built and published (ORDER_EVENTS).
    pub events: bool,
}

/// A committed part: what it did, the events the batch loop must publish before the batch's
/// offsets move, and how many events it left in the outbox.
#[derive(Debug, Default)]
pub struct PartResult {
    pub applied: Applied,
    pub events: Vec<OrderEvent>,
    pub outbox: usize,
    /// What it did, for the protocol trace: gathered only when recording.
    pub trace: Option<Effects>,
    /// Whether taking its lane locks had to wait for another transaction (`LaneLocks`).
    pub waited_for_lanes: bool,
}

/// Lane locks: while consumers of a group contend, each part first takes a transaction-level
/// advisory lock per lane of its products (split::lane), in lane order, waiting for it. Two
/// consumers' parts on one lane then queue in PostgreSQL's lock queue and follow each other
/// at once, instead of failing NOWAIT on the row and sleeping a jittered backoff while the
/// row stands free. The product rows themselves are still locked NOWAIT (or SKIP LOCKED)
/// after that: writers that take no lane lock (the expiry sweeper) still meet a conflict
/// instead of a wait. Lanes are taken in ascending order and row locks never wait, so no
/// lock cycle can form; `LANE_WAIT_LIMIT` bounds the wait anyway, and a part that reaches
/// it fails as a lock conflict (55P03) and is retried like one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneLocks {
    pub lanes: usize,
}

/// The advisory lock space of lane locks (the first key of the two-key form): "of".
pub const LANE_LOCK_SPACE: i32 = 0x6f66;
const LANE_WAIT_LIMIT: &str = "SET LOCAL lock_timeout = '5s'";
/// unnest keeps the array's order, and the array is sorted: lanes are taken in order.
const TAKE_LANES: &str = "SELECT pg_advisory_xact_lock($1, lane) FROM unnest($2::int4[]) AS lane";
/// Taking lane locks slower than this means another transaction held one: the consumer is
/// still contended (worker_pool keeps its lanes). A free lock takes one round trip.
const LANE_WAIT_SIGNAL: std::time::Duration = std::time::Duration::from_millis(5);

/// Takes the lane locks of `products` in this transaction; true if it had to wait.
async fn take_lanes(transaction: &Transaction<'_>, products: &[&str], locks: LaneLocks) -> Result<bool, ReserveError> {
    let mut lanes: Vec<i32> = products.iter().map(|product| crate::split::lane(product, locks.lanes) as i32).collect();
    lanes.sort_unstable();
    lanes.dedup();
    let started = std::time::Instant::now();
    transaction.batch_execute(LANE_WAIT_LIMIT).await?;
    let take = transaction.prepare_cached(TAKE_LANES).await?;
    transaction.query(&take, &[&LANE_LOCK_SPACE, &lanes]).await?;
    Ok(started.elapsed() > LANE_WAIT_SIGNAL)
}

// Sorting before locking gives every transaction the same lock order. With NOWAIT that
// prevents livelock between two batches that each hold half of the other's rows. now() is
// the transaction's timestamp: every time the transaction writes or compares is this one.
pub(crate) const LOCK_PRODUCTS: &str = "SELECT product_id, available_quantity, now() FROM inventory \
     WHERE product_id = ANY($1) ORDER BY product_id FOR UPDATE NOWAIT";

/// `Locking::Available`: the same order and the same rows, skipping those held elsewhere.
/// Never waits, like NOWAIT, so the sorted order still rules out lock cycles.
const LOCK_AVAILABLE: &str = "SELECT product_id, available_quantity, now() FROM inventory \
     WHERE product_id = ANY($1) ORDER BY product_id FOR UPDATE SKIP LOCKED";

/// Which of the rows SKIP LOCKED passed over exist: those are held by another transaction;
/// the others are unknown products, rejected as with NOWAIT.
const EXISTING_PRODUCTS: &str = "SELECT product_id FROM inventory WHERE product_id = ANY($1)";

pub(crate) const NOW: &str = "SELECT now()";

/// Orders of the part that exist: placements already applied (redeliveries), and the orders
/// commands act on. Read only after the locks: any transaction changing them holds the same
/// product locks, so what this sees is final until our commit. A cart's lines come along
/// (the subquery runs only for carts: single-line orders keep their line in the row).
pub(crate) const FIND_ORDERS: &str = "SELECT o.order_id, o.customer_id, o.product_id, o.quantity, o.status, o.reason, \
            o.expires_at, o.processed_at, \
            CASE WHEN o.line_count > 1 THEN ARRAY(SELECT l.product_id FROM order_lines l WHERE l.order_id = o.order_id ORDER BY l.line_no) END, \
            CASE WHEN o.line_count > 1 THEN ARRAY(SELECT l.quantity FROM order_lines l WHERE l.order_id = o.order_id ORDER BY l.line_no) END \
     FROM orders o WHERE o.order_id = ANY($1)";

/// Commands decided before (redeliveries), or parked and now applicable. Locked, so that the
/// sweeper's refusal of a parked command and its application here cannot both happen.
const FIND_COMMANDS: &str = "SELECT command_id, outcome, reason, decided_at FROM order_commands \
     WHERE command_id = ANY($1) FOR UPDATE";

/// Parked commands of this part's orders, to apply right after their placement. The pending
/// set is normally empty, and the uncorrelated EXISTS is a one-time filter that PostgreSQL
/// evaluates first: the per-order probes of `= ANY($1)` run only when some command is parked
/// at all. Measured with 10,000 ids and nothing parked: 17-19 ms per call without the guard
/// (two index probes per id), 0.01 ms with it (README, Performance).
const FIND_PARKED: &str = "SELECT command_id, order_id, customer_id, kind, issued_at FROM order_commands \
     WHERE outcome = 'pending' AND order_id = ANY($1) \
       AND EXISTS (SELECT 1 FROM order_commands WHERE outcome = 'pending') \
     ORDER BY received_at, command_id FOR UPDATE";

// A cart's row has NULL product_id, quantity and amount and its line count; its lines go to
// order_lines (INSERT_LINES).
const INSERT_ORDERS: &str = "INSERT INTO orders \
     (order_id, customer_id, product_id, quantity, amount, line_count, status, reason, created_at, processed_at, status_changed_at, expires_at) \
     SELECT o.order_id, o.customer_id, o.product_id, o.quantity, (o.amount_cents::numeric / 100)::numeric(12, 2), \
            o.line_count, o.status, o.reason, o.created_at, $10::timestamptz, $10::timestamptz, o.expires_at \
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::int8[], $6::int2[], $7::text[], $8::text[], $9::timestamptz[], $11::timestamptz[]) \
          AS o(order_id, customer_id, product_id, quantity, amount_cents, line_count, status, reason, created_at, expires_at) \
     ON CONFLICT (order_id) DO NOTHING";

// No ON CONFLICT: it runs only after every order of the set was inserted as new, and a
// cart's lines are written with its row, in this transaction, or not at all.
const INSERT_LINES: &str = "INSERT INTO order_lines (order_id, line_no, product_id, quantity, amount, problem) \
     SELECT l.order_id, l.line_no, l.product_id, l.quantity, (l.amount_cents::numeric / 100)::numeric(12, 2), l.problem \
     FROM unnest($1::uuid[], $2::int2[], $3::text[], $4::int4[], $5::int8[], $6::text[]) \
          AS l(order_id, line_no, product_id, quantity, amount_cents, problem)";

const CHANGE_ORDERS: &str = "UPDATE orders AS o SET status = c.status, reason = c.reason, status_changed_at = $4 \
     FROM unnest($1::uuid[], $2::text[], $3::text[]) AS c(order_id, status, reason) \
     WHERE o.order_id = c.order_id AND o.status = 'reserved'";

/// New commands are inserted; a parked one (pending) gets its decision. A decided one is
/// never touched again.
const RECORD_COMMANDS: &str = "INSERT INTO order_commands \
     (command_id, order_id, customer_id, kind, outcome, reason, issued_at, received_at, decided_at) \
     SELECT c.command_id, c.order_id, c.customer_id, c.kind, c.outcome, c.reason, c.issued_at, $8::timestamptz, \
            CASE WHEN c.outcome = 'pending' THEN NULL ELSE $8::timestamptz END \
     FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]) \
          AS c(command_id, order_id, customer_id, kind, outcome, reason, issued_at) \
     ON CONFLICT (command_id) DO UPDATE SET outcome = excluded.outcome, reason = excluded.reason, decided_at = excluded.decided_at \
     WHERE order_commands.outcome = 'pending'";

pub const MOVE_STOCK: &str = "UPDATE inventory AS i \
     SET available_quantity = i.available_quantity + d.available, \
         reserved_quantity = i.reserved_quantity + d.reserved, \
         total_quantity = i.total_quantity + d.total, \
         sold_quantity = i.sold_quantity + d.sold, \
         updated_at = now() \
     FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[]) AS d(product_id, available, reserved, total, sold) \
     WHERE i.product_id = d.product_id";

/// Applies a part in one READ COMMITTED transaction: lock its products (sorted, NOWAIT),
/// read what exists, decide in memory (`lifecycle::Ledger`), write set-based, commit.
pub async fn apply(pool: &Pool, part: &Part<'_>, settings: &LifecycleSettings) -> Result<PartResult, ReserveError> {
    Ok(apply_with(pool, part, settings, Locking::All, None).await?.0)
}

/// `apply`, with the locks taken as `locking` says. With `Locking::Available` the part may
/// be applied in part: what did not go ahead comes back, to be retried. An attempt that
/// could take none of its components fails with `LockConflict`, as a NOWAIT one would.
pub async fn apply_with<'a>(
    pool: &Pool,
    part: &Part<'a>,
    settings: &LifecycleSettings,
    locking: Locking,
    lane_locks: Option<LaneLocks>,
) -> Result<(PartResult, Option<Part<'a>>), ReserveError> {
    let mut client = pool.get().await?;
    let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
    let waited_for_lanes = match lane_locks {
        Some(locks) => take_lanes(&transaction, &part.products, locks).await?,
        None => false,
    };
    let (mut result, rest) = lock_and_write(transaction, part, settings, locking).await?;
    result.waited_for_lanes = waited_for_lanes;
    Ok((result, rest))
}

async fn lock_and_write<'a>(
    transaction: Transaction<'_>,
    part: &Part<'a>,
    settings: &LifecycleSettings,
    locking: Locking,
) -> Result<(PartResult, Option<Part<'a>>), ReserveError> {
    if locking == Locking::All {
        let (available, now) = lock_products(&transaction, &part.products).await?;
        return Ok((write_locked(transaction, part, available, now, settings).await?, None));
    }
    let lock = transaction.prepare_cached(LOCK_AVAILABLE).await?;
    let rows = transaction.query(&lock, &[&part.products]).await?;
    let available: HashMap<String, i64> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let skipped: Vec<&str> = part.products.iter().copied().filter(|product| !available.contains_key(*product)).collect();
    let busy: HashSet<String> = if skipped.is_empty() {
        HashSet::new()
    } else {
        let existing = transaction.prepare_cached(EXISTING_PRODUCTS).await?;
        transaction.query(&existing, &[&skipped]).await?.iter().map(|row| row.get(0)).collect()
    };
    let now = match rows.first() {
        Some(row) => row.get(2),
        None => {
            let query = transaction.prepare_cached(NOW).await?;
            transaction.query_one(&query, &[]).await?.get(0)
        }
    };
    if busy.is_empty() {
        return Ok((write_locked(transaction, part, available, now, settings).await?, None));
    }
    let indices: Vec<usize> = (0..part.steps.len()).collect();
    let (ahead, later) = crate::split::go_ahead(&indices, |index| part.touches[index].iter(), |product| busy.contains(product));
    if ahead.is_empty() {
        return Err(ReserveError::LockConflict);
    }
    let result = write_locked(transaction, &part.subset(&ahead), available, now, settings).await?;
    Ok((result, Some(part.subset(&later))))
}

impl<'a> Part<'a> {
    pub fn new(steps: Vec<Step<'a>>, touches: Vec<Touches<'a>>) -> Self {
        debug_assert_eq!(steps.len(), touches.len());
        let mut products: Vec<&'a str> = touches.iter().flat_map(|touches| touches.iter()).collect();
        products.sort_unstable();
        products.dedup();
        Self { steps, touches, products }
    }

    /// The steps at `indices` (in that order), with their products.
    fn subset(&self, indices: &[usize]) -> Self {
        Self::new(indices.iter().map(|&i| self.steps[i]).collect(), indices.iter().map(|&i| self.touches[i]).collect())
    }
}

/// The body of a part's transaction, once its product rows are locked: `available` holds the
/// locked rows' stock and `now` the transaction's time.
async fn write_locked(
    transaction: Transaction<'_>,
    part: &Part<'_>,
    available: HashMap<String, i64>,
    now: DateTime<Utc>,
    settings: &LifecycleSettings,
) -> Result<PartResult, ReserveError> {

    let mut placement_ids = Vec::new();
    let mut command_ids = Vec::new();
    let mut order_ids = Vec::new();
    for step in &part.steps {
        match step {
            Step::Place(order) => {
                placement_ids.push(order.order_id);
                order_ids.push(order.order_id);
            }
            Step::Command { command, .. } => {
                command_ids.push(command.command_id);
                order_ids.push(command.order_id);
            }
        }
    }
    debug_assert!(placement_ids.iter().collect::<HashSet<_>>().len() == placement_ids.len(), "callers remove duplicate order_ids first");
    // Pipelined: the three lookups cost one round trip.
    let find_orders = transaction.prepare_cached(FIND_ORDERS).await?;
    let (find_commands, find_parked) = tokio::try_join!(transaction.prepare_cached(FIND_COMMANDS), transaction.prepare_cached(FIND_PARKED))?;
    let (order_param, command_param, placement_param) = ([&order_ids as &Param], [&command_ids as &Param], [&placement_ids as &Param]);
    let (found, decided, parked) = tokio::try_join!(
        transaction.query(&find_orders, &order_param),
        async {
            if command_ids.is_empty() {
                return Ok(Vec::new());
            }
            transaction.query(&find_commands, &command_param).await
        },
        async {
            if placement_ids.is_empty() {
                return Ok(Vec::new());
            }
            transaction.query(&find_parked, &placement_param).await
        },
    )?;

    let mut existing: HashMap<Uuid, Stored> = HashMap::with_capacity(found.len());
    for row in &found {
        existing.insert(row.get(0), Stored::from_row(row));
    }
    let decided: HashMap<Uuid, (String, Option<String>, Option<DateTime<Utc>>)> =
        decided.iter().map(|row| (row.get(0), (row.get(1), row.get(2), row.get(3)))).collect();
    let own_commands: HashSet<Uuid> = command_ids.iter().copied().collect();
    let mut parked_by_order: HashMap<Uuid, Vec<ValidCommand>> = HashMap::new();
    for row in &parked {
        let command = parked_command(row);
        // The same command redelivered in this part is applied there, once.
        if !own_commands.contains(&command.command_id) {
            parked_by_order.entry(command.order_id).or_default().push(command);
        }
    }

    let mut result = PartResult::default();
    let mut trace = Effects::if_enabled();
    let mut steps = Vec::with_capacity(part.steps.len());
    for step in &part.steps {
        match *step {
            Step::Place(order) => {
                if let Some(stored) = existing.get(&order.order_id) {
                    result.applied.already_applied += 1;
                    Effects::note(&mut trace, order.order_id, None, "already_applied");
                    if settings.events {
                        result.events.push(events::placed(order.order_id, &stored.hold, stored.reason.as_deref(), stored.processed_at));
                    }
                } else {
                    steps.push(Step::Place(order));
                }
                for command in parked_by_order.get(&order.order_id).into_iter().flatten() {
                    steps.push(Step::Command { command, parked: true });
                }
            }
            Step::Command { command, parked } => match decided.get(&command.command_id) {
                Some(stored) if stored.0 != "pending" => {
                    result.applied.already_applied += 1;
                    Effects::note(&mut trace, command.order_id, Some(command.command_id), "already_applied");
                    if settings.events {
                        result.events.push(redelivered_command_event(command, stored, &existing));
                    }
                }
                // Parked earlier: the message that parked it may be another member's, whose
                // offset is committed already, so no redelivery would bring this decision's
                // event back after a crash. It goes through the outbox (found by the model
                // checker, issue #14).
                Some(_) => steps.push(Step::Command { command, parked: true }),
                None => steps.push(Step::Command { command, parked }),
            },
        }
    }

    let mut ledger = Ledger::new(available, existing.iter().map(|(id, stored)| (*id, stored.hold.clone())).collect());
    let outcomes = ledger.apply(&steps, now, settings.default_hold_seconds);
    let mut writes = Writes::default();
    let mut outbox_events = Vec::new();
    for (step, outcome) in steps.iter().zip(&outcomes) {
        match (step, outcome) {
            (Step::Place(order), Outcome::Placed { decision, expires_at, short, .. }) => {
                match decision {
                    Decision::Reserved => result.applied.reserved += 1,
                    Decision::Rejected(RejectReason::InsufficientStock) => result.applied.insufficient_stock += 1,
                    Decision::Rejected(RejectReason::UnknownProduct) => result.applied.unknown_product += 1,
                }
                writes.placements.push((order, *decision, *expires_at));
                Effects::note(&mut trace, order.order_id, None, decision.status());
                if order.lines.is_cart() {
                    writes.carts.push((order, short.as_slice()));
                }
                if settings.events {
                    let hold = &ledger.orders[&order.order_id];
                    result.events.push(events::placed(order.order_id, hold, decision.reason(), now));
                }
            }
            (Step::Command { command, parked }, Outcome::Decided { verdict, .. }) => {
                match (verdict.change, verdict.refusal) {
                    (Some(Change::Confirm), _) => result.applied.confirmed += 1,
                    (Some(Change::Cancel), _) => result.applied.cancelled += 1,
                    (Some(Change::Expire), _) => result.applied.expired += 1,
                    (None, _) => {}
                }
                if let Some(refusal) = verdict.refusal {
                    result.applied.record_refusal(command.kind, refusal);
                }
                if let Some(change) = verdict.change {
                    writes.changes.insert(command.order_id, change);
                }
                writes.commands.push((command, Some(*verdict)));
                Effects::note(&mut trace, command.order_id, Some(command.command_id), verdict.change.map_or("refused", |c| c.status().as_str()));
                if settings.events {
                    let hold = &ledger.orders[&command.order_id];
                    let event = events::decided(
                        command.command_id,
                        command.kind,
                        command.order_id,
                        &command.customer_id,
                        Some(hold),
                        CommandOutcome::of(verdict.refusal),
                        now,
                    );
                    if verdict.change == Some(Change::Expire) {
                        outbox_events.push(events::expired(command.order_id, hold, now));
                    }
                    if *parked {
                        outbox_events.push(event);
                    } else {
                        result.events.push(event);
                    }
                }
            }
            (Step::Command { command, .. }, Outcome::Unknown { .. }) => {
                result.applied.parked += 1;
                Effects::note(&mut trace, command.order_id, Some(command.command_id), "parked");
                writes.commands.push((command, None));
            }
            (step, outcome) => unreachable!("the ledger answers each step in kind: {step:?} -> {outcome:?}"),
        }
    }

    let inserted = insert_orders(&transaction, &writes.placements, now).await?;
    if inserted != writes.placements.len() as u64 {
        return Err(ReserveError::ConcurrentlyApplied(writes.placements.len() - inserted as usize));
    }
    insert_lines(&transaction, &writes.carts).await?;
    change_orders(&transaction, &writes.changes, now).await?;
    record_commands(&transaction, &writes.commands, now).await?;
    move_stock(&transaction, &ledger.deltas).await?;
    outbox::write(&transaction, &outbox_events).await?;
    transaction.commit().await?;
    result.outbox = outbox_events.len();
    result.trace = trace.map(|trace| Effects {
        stock: protocol_trace::stock_moves(&ledger.deltas),
        outbox_events: outbox_events.iter().map(|e| e.event_id).collect(),
        events: result.events.iter().map(|e| e.event_id).collect(),
        ..trace
    });
    Ok(result)
}

/// Parks commands whose order is not known (not in the batch, not in the database): they
/// wait in `order_commands` as `pending` until their order is placed (applied right after
/// it, in the placement's transaction) or until PARKED_COMMAND_TTL_SECONDS, when the sweeper
/// refuses them `unknown_order`. A command decided before (a redelivery) gets its event
/// rebuilt. No product lock: nothing here touches stock. An order placed concurrently by
/// another consumer may miss such a command; the sweeper applies those (see `expiry`).
pub async fn park(pool: &Pool, commands: &[&ValidCommand], settings: &LifecycleSettings) -> Result<PartResult, ReserveError> {
    let mut client = pool.get().await?;
    let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
    let command_ids: Vec<Uuid> = commands.iter().map(|c| c.command_id).collect();
    let order_ids: Vec<Uuid> = commands.iter().map(|c| c.order_id).collect();
    let (find_commands, find_orders, now) =
        tokio::try_join!(transaction.prepare_cached(FIND_COMMANDS), transaction.prepare_cached(FIND_ORDERS), transaction.prepare_cached(NOW))?;
    let (command_param, order_param) = ([&command_ids as &Param], [&order_ids as &Param]);
    let (decided, found, now) = tokio::try_join!(
        transaction.query(&find_commands, &command_param),
        transaction.query(&find_orders, &order_param),
        transaction.query_one(&now, &[]),
    )?;
    let now: DateTime<Utc> = now.get(0);
    let decided: HashMap<Uuid, (String, Option<String>, Option<DateTime<Utc>>)> =
        decided.iter().map(|row| (row.get(0), (row.get(1), row.get(2), row.get(3)))).collect();
    let existing: HashMap<Uuid, Stored> = found.iter().map(|row| (row.get(0), Stored::from_row(row))).collect();
    let mut result = PartResult::default();
    let mut trace = Effects::if_enabled();
    let mut new = Vec::new();
    for command in commands {
        match decided.get(&command.command_id) {
            Some(stored) if stored.0 != "pending" => {
                result.applied.already_applied += 1;
                if settings.events {
                    result.events.push(redelivered_command_event(command, stored, &existing));
                }
                Effects::note(&mut trace, command.order_id, Some(command.command_id), "already_applied");
            }
            Some(_) => {
                result.applied.already_applied += 1;
                Effects::note(&mut trace, command.order_id, Some(command.command_id), "already_applied");
            }
            None => {
                result.applied.parked += 1;
                new.push((*command, None));
                Effects::note(&mut trace, command.order_id, Some(command.command_id), "parked");
            }
        }
    }
    record_commands(&transaction, &new, now).await?;
    transaction.commit().await?;
    result.trace = trace.map(|trace| Effects { events: result.events.iter().map(|e| e.event_id).collect(), ..trace });
    Ok(result)
}

/// A command decided earlier, found again on redelivery: its event, rebuilt from the stored
/// outcome with the same event_id.
fn redelivered_command_event(
    command: &ValidCommand,
    (outcome, reason, decided_at): &(String, Option<String>, Option<DateTime<Utc>>),
    existing: &HashMap<Uuid, Stored>,
) -> OrderEvent {
    let outcome = CommandOutcome::stored(outcome, reason.as_deref()).expect("a decided command has an outcome");
    let hold = existing.get(&command.order_id).map(|stored| &stored.hold);
    let at = decided_at.expect("a decided command has its time");
    events::decided(command.command_id, command.kind, command.order_id, &command.customer_id, hold, outcome, at)
}

/// A parked command as read back from `order_commands`: the first five columns are
/// command_id, order_id, customer_id, kind, issued_at.
pub(crate) fn parked_command(row: &tokio_postgres::Row) -> ValidCommand {
    ValidCommand {
        command_id: row.get(0),
        order_id: row.get(1),
        customer_id: row.get(2),
        kind: CommandKind::parse(row.get(3)).expect("the table's CHECK allows only known kinds"),
        issued_at: row.get(4),
    }
}

type Param = dyn tokio_postgres::types::ToSql + Sync;

/// A stored order as `FIND_ORDERS` returns it.
struct Stored {
    hold: Hold,
    reason: Option<String>,
    processed_at: DateTime<Utc>,
}

impl Stored {
    fn from_row(row: &tokio_postgres::Row) -> Self {
        Self {
            hold: Hold {
                customer_id: row.get(1),
                lines: lines_of_row(row, 2, 8),
                status: Status::parse(row.get(4)).expect("the table's CHECK allows only known states"),
                expires_at: row.get(6),
            },
            reason: row.get(5),
            processed_at: row.get(7),
        }
    }
}

/// A stored order's lines from a row: a single-line order's `product_id` and `quantity` at
/// `single` and `single + 1`, or, for a cart (those NULL), the arrays of its lines' products
/// and quantities at `arrays` and `arrays + 1` (`FIND_ORDERS` shows how).
pub(crate) fn lines_of_row(row: &tokio_postgres::Row, single: usize, arrays: usize) -> Vec<HeldLine> {
    let product: Option<String> = row.get(single);
    let quantity: Option<i32> = row.get(single + 1);
    if let (Some(product_id), Some(quantity)) = (product, quantity) {
        return vec![HeldLine { product_id, quantity }];
    }
    let products: Vec<String> = row.get(arrays);
    let quantities: Vec<i32> = row.get(arrays + 1);
    debug_assert_eq!(products.len(), quantities.len());
    products.into_iter().zip(quantities).map(|(product_id, quantity)| HeldLine { product_id, quantity }).collect()
}

#[derive(Default)]
struct Writes<'a> {
    placements: Vec<(&'a ValidOrder, Decision, Option<DateTime<Utc>>)>,
    /// New carts, with the short lines of a rejected one: their lines go to `order_lines`.
    carts: Vec<(&'a ValidOrder, &'a [(usize, RejectReason)])>,
    /// The order's change (at most one: every state it leads to is final).
    changes: HashMap<Uuid, Change>,
    /// Decided commands, and parked ones (`None`).
    commands: Vec<(&'a ValidCommand, Option<Verdict>)>,
}

/// Locks `products` and returns their available stock and the transaction's time.
pub(crate) async fn lock_products(
    transaction: &Transaction<'_>,
    products: &[&str],
) -> Result<(HashMap<String, i64>, DateTime<Utc>), ReserveError> {
    debug_assert!(products.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    let lock = transaction.prepare_cached(LOCK_PRODUCTS).await?;
    let rows = transaction.query(&lock, &[&products]).await?;
    let now = match rows.first() {
        Some(row) => row.get(2),
        None => {
            let query = transaction.prepare_cached(NOW).await?;
            transaction.query_one(&query, &[]).await?.get(0)
        }
    };
    Ok((rows.iter().map(|row| (row.get(0), row.get(1))).collect(), now))
}

async fn insert_orders(
    transaction: &Transaction<'_>,
    placements: &[(&ValidOrder, Decision, Option<DateTime<Utc>>)],
    now: DateTime<Utc>,
) -> Result<u64, ReserveError> {
    if placements.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = placements.iter().map(|(o, ..)| o.order_id).collect();
    let customers: Vec<&str> = placements.iter().map(|(o, ..)| o.customer_id.as_str()).collect();
    // A single-line order's line, or NULLs for a cart.
    fn single<'a>(order: &'a ValidOrder) -> Option<&'a Line> {
        match &order.lines {
            Lines::One(line) => Some(line),
            Lines::Cart(_) => None,
        }
    }
    let products: Vec<Option<&str>> = placements.iter().map(|(o, ..)| single(o).map(|l| l.product_id.as_str())).collect();
    let quantities: Vec<Option<i32>> = placements.iter().map(|(o, ..)| single(o).map(|l| l.quantity)).collect();
    let amounts: Vec<Option<i64>> = placements.iter().map(|(o, ..)| single(o).map(|l| l.amount_cents)).collect();
    let line_counts: Vec<i16> = placements.iter().map(|(o, ..)| o.lines().len() as i16).collect();
    let statuses: Vec<&str> = placements.iter().map(|(_, d, _)| d.status()).collect();
    let reasons: Vec<Option<&str>> = placements.iter().map(|(_, d, _)| d.reason()).collect();
    let created: Vec<DateTime<Utc>> = placements.iter().map(|(o, ..)| o.placed_at).collect();
    let expires: Vec<Option<DateTime<Utc>>> = placements.iter().map(|(.., e)| *e).collect();
    let insert = transaction.prepare_cached(INSERT_ORDERS).await?;
    Ok(transaction
        .execute(&insert, &[&ids, &customers, &products, &quantities, &amounts, &line_counts, &statuses, &reasons, &created, &now, &expires])
        .await?)
}

/// The lines of new carts, with the problem of each short line of a rejected cart. Nothing
/// to do without carts.
async fn insert_lines(transaction: &Transaction<'_>, carts: &[(&ValidOrder, &[(usize, RejectReason)])]) -> Result<(), ReserveError> {
    if carts.is_empty() {
        return Ok(());
    }
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (order, short) in carts {
        for (n, line) in order.lines().iter().enumerate() {
            columns.0.push(order.order_id);
            columns.1.push(n as i16 + 1);
            columns.2.push(line.product_id.as_str());
            columns.3.push(line.quantity);
            columns.4.push(line.amount_cents);
            columns.5.push(short.iter().find(|(at, _)| *at == n).map(|(_, reason)| reason.as_str()));
        }
    }
    let (ids, numbers, products, quantities, amounts, problems) = columns;
    let insert = transaction.prepare_cached(INSERT_LINES).await?;
    let inserted = transaction.execute(&insert, &[&ids, &numbers, &products, &quantities, &amounts, &problems]).await?;
    debug_assert_eq!(inserted, ids.len() as u64, "every line of every new cart is inserted");
    Ok(())
}

async fn change_orders(transaction: &Transaction<'_>, changes: &HashMap<Uuid, Change>, now: DateTime<Utc>) -> Result<(), ReserveError> {
    if changes.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = changes.keys().copied().collect();
    let statuses: Vec<&str> = changes.values().map(|c| c.status().as_str()).collect();
    let reasons: Vec<&str> = changes.values().map(|c| c.reason()).collect();
    let update = transaction.prepare_cached(CHANGE_ORDERS).await?;
    let updated = transaction.execute(&update, &[&ids, &statuses, &reasons, &now]).await?;
    // Under the product locks every changed order was reserved when read; anything else is
    // a bug, and committing would leave stock moved for an order that did not change.
    if updated != ids.len() as u64 {
        return Err(ReserveError::ConcurrentlyApplied(ids.len() - updated as usize));
    }
    Ok(())
}

async fn record_commands(
    transaction: &Transaction<'_>,
    commands: &[(&ValidCommand, Option<Verdict>)],
    now: DateTime<Utc>,
) -> Result<(), ReserveError> {
    if commands.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = commands.iter().map(|(c, _)| c.command_id).collect();
    let orders: Vec<Uuid> = commands.iter().map(|(c, _)| c.order_id).collect();
    let customers: Vec<&str> = commands.iter().map(|(c, _)| c.customer_id.as_str()).collect();
    let kinds: Vec<&str> = commands.iter().map(|(c, _)| c.kind.as_str()).collect();
    let outcomes: Vec<&str> = commands
        .iter()
        .map(|(_, verdict)| match verdict {
            None => "pending",
            Some(Verdict { refusal: Some(_), .. }) => "refused",
            Some(_) => "applied",
        })
        .collect();
    let reasons: Vec<Option<&str>> = commands.iter().map(|(_, v)| v.and_then(|v| v.refusal).map(Refusal::as_str)).collect();
    let issued: Vec<DateTime<Utc>> = commands.iter().map(|(c, _)| c.issued_at).collect();
    let record = transaction.prepare_cached(RECORD_COMMANDS).await?;
    transaction.execute(&record, &[&ids, &orders, &customers, &kinds, &outcomes, &reasons, &issued, &now]).await?;
    Ok(())
}

/// Applies the summed stock changes, one statement for all products.
pub(crate) async fn move_stock(transaction: &Transaction<'_>, deltas: &HashMap<String, StockDelta>) -> Result<(), ReserveError> {
    let changed: Vec<(&String, &StockDelta)> = deltas.iter().filter(|(_, d)| !d.is_zero()).collect();
    if changed.is_empty() {
        return Ok(());
    }
    let products: Vec<&str> = changed.iter().map(|(p, _)| p.as_str()).collect();
    let available: Vec<i64> = changed.iter().map(|(_, d)| d.available).collect();
    let reserved: Vec<i64> = changed.iter().map(|(_, d)| d.reserved).collect();
    let total: Vec<i64> = changed.iter().map(|(_, d)| d.total).collect();
    let sold: Vec<i64> = changed.iter().map(|(_, d)| d.sold).collect();
    let update = transaction.prepare_cached(MOVE_STOCK).await?;
    let updated = transaction.execute(&update, &[&products, &available, &reserved, &total, &sold]).await?;
    debug_assert_eq!(updated, products.len() as u64, "every locked row is updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_classes_are_retried_quickly() {
        for (code, class) in [
            (SqlState::ADMIN_SHUTDOWN, ErrorClass::Transient),
            (SqlState::CONNECTION_FAILURE, ErrorClass::Transient),
            (SqlState::T_R_SERIALIZATION_FAILURE, ErrorClass::Transient),
            (SqlState::T_R_DEADLOCK_DETECTED, ErrorClass::Transient),
            (SqlState::TOO_MANY_CONNECTIONS, ErrorClass::Transient),
            (SqlState::LOCK_NOT_AVAILABLE, ErrorClass::Conflict),
            (SqlState::CHECK_VIOLATION, ErrorClass::Permanent),
            (SqlState::UNDEFINED_COLUMN, ErrorClass::Permanent),
            (SqlState::UNDEFINED_TABLE, ErrorClass::Permanent),
            (SqlState::NUMERIC_VALUE_OUT_OF_RANGE, ErrorClass::Permanent),
        ] {
            assert_eq!(classify(&code), class, "{}", code.code());
        }
    }
}
