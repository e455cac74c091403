//! The state of the model's world: the group (who owns which partition, committed offsets),
//! each member's memory, the database, and the `order-events` log. Small integers only, so
//! that states hash fast and traces read well.

use std::collections::{BTreeMap, BTreeSet};

use orderflow_common::events::EventType;
use orderflow_consumer::lifecycle::{Refusal, Status};

/// What an event is about: placement and expiry events are named by the order, decisions
/// of commands by the command (`orderflow_common::events::event_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Order(u8),
    Command(u8),
}

/// An event id, readable: its subject and type. The real id is a UUIDv5 of exactly these
/// two (`event_id`), so equal `Ev`s are equal event_ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ev {
    pub subject: Subject,
    pub kind: EventType,
}

impl Ord for Ev {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.subject, self.kind.as_str()).cmp(&(other.subject, other.kind.as_str()))
    }
}

impl PartialOrd for Ev {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Ev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.subject {
            Subject::Order(o) => write!(f, "{}(o{o})", self.kind.as_str()),
            Subject::Command(c) => write!(f, "{}(k{c})", self.kind.as_str()),
        }
    }
}

/// One product's row in `inventory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Row {
    pub available: i64,
    pub reserved: i64,
    pub total: i64,
    pub sold: i64,
}

/// A row of `orders`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoredOrder {
    pub status: Status,
    /// The deadline as a clock tick.
    pub expires_at: Option<u16>,
}

/// A row of `order_commands`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredCommand {
    Pending,
    Decided { refusal: Option<Refusal> },
}

/// What PostgreSQL holds: only what committed transactions wrote. The last three fields are
/// the history the properties need (never read by the protocol).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Db {
    pub inventory: Vec<Row>,
    pub orders: BTreeMap<u8, StoredOrder>,
    pub commands: BTreeMap<u8, StoredCommand>,
    pub outbox: BTreeSet<Ev>,
    /// Every committed change, by the event that announces it.
    pub changes: BTreeSet<Ev>,
    /// How often each order's placement was applied.
    pub applied: BTreeMap<u8, u8>,
    /// How often each order's hold was ended (confirm, cancel, expiry).
    pub released: BTreeMap<u8, u8>,
}

/// A message a member collected: where it is, and the assignment generation of its
/// partition when it was polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Polled {
    pub partition: u8,
    pub offset: u8,
    pub generation: u8,
}

/// A step of a part, by ids (`lifecycle::Step` with the world's ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepRef {
    Place(u8),
    Command { command: u8, parked: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartKind {
    /// `reservation::apply`: one transaction over the part's products.
    Apply,
    /// `reservation::park`: commands whose order is unknown, no product lock.
    Park,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Part {
    pub kind: PartKind,
    /// The steps not committed yet: all of them until the part's first commit; after a
    /// partial commit (`Locking::Available`), the components that had to wait.
    pub steps: Vec<StepRef>,
    /// The products each step touches, by index, as `worker_pool::plan` gave them
    /// (`reservation::Part::touches`): what links steps into components for `go_ahead`.
    pub touches: Vec<Vec<u8>>,
    /// Product indexes of `steps`, sorted.
    pub products: Vec<u8>,
    pub committed: bool,
    /// Mutation `EventsBeforeCommit` only: the part's events went out before its commit.
    pub published_early: bool,
}

/// A batch being written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Batch {
    pub positions: Vec<Polled>,
    pub parts: Vec<Part>,
    /// Events of the committed parts, published (batch path) before the offsets are recorded.
    pub events: BTreeSet<Ev>,
    pub published: bool,
}

impl Batch {
    pub fn written(&self) -> bool {
        self.parts.iter().all(|part| part.committed)
    }
}

/// One consumer process's memory: lost at a crash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Member {
    /// Next offset to fetch, per partition (meaningful while assigned).
    pub fetch: Vec<u8>,
    /// Collected, not yet started (the next batch).
    pub next: Vec<Polled>,
    pub in_flight: Option<Batch>,
    /// `ProcessedOffsets`: the next offset per partition, recorded as done.
    pub book: Vec<Option<u8>>,
    /// Mutation `ExpiryWithoutLock` only: due holds read by a sweep that has not written yet.
    pub sweep_read: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    /// The logical clock: database time is `World::time(clock)`.
    pub clock: u8,
    /// The member each partition is assigned to.
    pub owner: Vec<u8>,
    /// Assignment generation per partition: bumped whenever it is (re)assigned.
    pub generation: Vec<u8>,
    /// The group's committed offsets.
    pub committed: Vec<u8>,
    pub members: Vec<Member>,
    pub db: Db,
    /// `order-events`: the event ids published (a re-publish of the same id adds nothing).
    pub log: BTreeSet<Ev>,
    /// Faults left.
    pub budget: crate::world::Budget,
    /// History for the properties: a commit that moved a partition's offset backwards
    /// (partition, from, to).
    pub regressed: Option<(u8, u8, u8)>,
}
