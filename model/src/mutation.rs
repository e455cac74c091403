//! Deliberately broken protocols. A checker that finds nothing proves nothing unless it
//! finds these: each must produce a counterexample (model/tests/mutations.rs).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// A batch's offsets are recorded and committed when it starts, before its parts commit.
    OffsetsBeforeDb,
    /// A part's events are published before its transaction commits.
    EventsBeforeCommit,
    /// No dedup by order_id: neither inside a batch (`worker_pool::unique`) nor against the
    /// database (a stored placement is applied again).
    NoDedup,
    /// The sweeper reads the due holds without the row locks, and writes later without
    /// checking them again.
    ExpiryWithoutLock,
    /// A command whose order is not known yet is decided at once (refused `unknown_order`)
    /// instead of waiting for its order.
    CancelBeforeOrder,
    /// A cart's lines are split by product like single-line orders: each part commits its
    /// line on its own.
    CartPartByPart,
    /// The rule before issue #14's fix: a finished batch's positions are recorded when their
    /// partition is assigned now, although it may have been revoked and assigned back since
    /// the poll (a stale batch).
    StaleBatchOffsets,
    /// A broken `split::go_ahead` after a partial lock (`Locking::Available`): each line of
    /// each step judged on its own instead of whole components, so a cart's line on a free
    /// product goes ahead while its line on a busy product waits for the next attempt.
    GoAheadPerLine,
}

impl Mutation {
    pub const ALL: [Self; 8] = [
        Self::OffsetsBeforeDb,
        Self::EventsBeforeCommit,
        Self::NoDedup,
        Self::ExpiryWithoutLock,
        Self::CancelBeforeOrder,
        Self::CartPartByPart,
        Self::StaleBatchOffsets,
        Self::GoAheadPerLine,
    ];
}
