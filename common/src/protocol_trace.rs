//! The consumer's protocol steps as structured records, for trace validation (issue #14):
//! the crash and chaos tests run the real consumer with `ORDERFLOW_PROTOCOL_TRACE=<dir>`,
//! each process appends one JSON line per step to `<dir>/<member>.jsonl`, and the model
//! crate replays those lines through its transition relation. A step the model does not
//! allow fails the test.
//!
//! This module holds only the schema, shared by the writer (consumer) and the reader
//! (model). A step is recorded right after it happened: `PartCommitted` after the
//! transaction's COMMIT returned, `EventsPublished` after the broker acknowledged,
//! `OffsetsCommitted` when the commit was handed to librdkafka, and so on. Off (the
//! default), recording costs one relaxed atomic load per step.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One line of a trace file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// This process's id, fresh at every start: a restart is a new member with no memory.
    pub member: Uuid,
    /// Position in this member's trace, from 0.
    pub seq: u64,
    /// Wall clock, microseconds since the Unix epoch: merges the files of several members
    /// (all on one machine in the tests).
    pub at_us: i64,
    #[serde(flatten)]
    pub step: Step,
}

/// Where a message sits in `orders-placed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// What a polled message carries, as far as the protocol cares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// A placement: one line, or a cart's lines (product, quantity).
    Order { order_id: Uuid, lines: Vec<(String, i64)> },
    /// A confirm or a cancel (`command` is "confirm" or "cancel").
    Command { command_id: Uuid, order_id: Uuid, command: String },
    /// Not parseable: goes to the dead-letter topic.
    Invalid,
}

/// What one committed transaction did to one order. `change` is the order's new status
/// ("reserved", "rejected", "confirmed", "cancelled", "expired"), or "already_applied"
/// (a redelivered placement, or a command decided before), "refused" (a command that
/// changed nothing), "parked" (a command whose order is not stored yet). A command that
/// finds its hold past the deadline expires it and is refused: `change` "expired" with its
/// `command_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    pub order_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    pub change: String,
}

/// A stock movement of one product in one transaction, summed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockMove {
    pub product_id: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

/// Why offsets were handed to the group coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitCause {
    /// After a batch, for every assigned partition. Asynchronous: recorded when handed to
    /// librdkafka, and the coordinator may still refuse it (during a rebalance it does, the
    /// rebalance run shows it in librdkafka's log); the commit callback that would tell was
    /// not called in that run (rust-rdkafka 0.39's StreamConsumer), so the trace cannot say.
    /// The group's offset may stay at an earlier commit.
    Batch,
    /// In the revoke callback, for the revoked partitions.
    Revoke,
    /// At shutdown.
    Final,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// The process started (settings: the default hold, whether events are on).
    Started { default_hold_seconds: u32, events: bool },
    /// The group gave this member these partitions (incremental or eager: the new set).
    Assigned { partitions: Vec<i32> },
    /// The group took these partitions away.
    Revoked { partitions: Vec<i32> },
    /// A batch was collected and its revoked partitions' messages dropped: what is written next.
    Polled { messages: Vec<(Position, Message)> },
    /// One part's transaction committed, with what it did. `part` is the part's index in
    /// its batch; the transaction that parks commands whose order is unknown comes last
    /// (index = number of parts). `events` are the events the part hands to the batch loop,
    /// published after every part committed (`EventsPublished { via_outbox: false }`),
    /// redelivered changes' rebuilt events included; `outbox_events` were written in the
    /// transaction, for the relay.
    PartCommitted {
        part: usize,
        effects: Vec<Effect>,
        stock: Vec<StockMove>,
        outbox_events: Vec<Uuid>,
        #[serde(default)]
        events: Vec<Uuid>,
    },
    /// One part's transaction rolled back (a NOWAIT conflict or another error); it is retried.
    PartFailed { part: usize, conflict: bool },
    /// The broker acknowledged these events (batch path or outbox relay).
    EventsPublished { event_ids: Vec<Uuid>, via_outbox: bool },
    /// A batch's offsets were recorded as done: the next offsets, per partition.
    OffsetsRecorded { next: Vec<Position> },
    /// Offsets handed to the coordinator (`offset` is the next offset to read).
    OffsetsCommitted { offsets: Vec<Position>, cause: CommitCause },
    /// One of the sweeper's transactions committed: an expiry (`expired`), parked commands
    /// decided because their order arrived, or parked commands refused `unknown_order`
    /// (those two in `effects`, with their command ids; an expiry a late command caused is
    /// in both). Its events are in the outbox only.
    Swept {
        expired: Vec<Uuid>,
        stock: Vec<StockMove>,
        outbox_events: Vec<Uuid>,
        #[serde(default)]
        effects: Vec<Effect>,
    },
}

/// The environment variable that switches recording on: a directory for the trace files.
pub const VARIABLE: &str = "ORDERFLOW_PROTOCOL_TRACE";

/// Reads one trace file's lines; a torn last line (the process was killed mid-write) is
/// dropped, any other bad line is an error.
pub fn parse(text: &str) -> Result<Vec<Record>, serde_json::Error> {
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    let mut records = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(_) if index + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(error) => return Err(error),
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_torn_last_line_is_dropped() {
        let record = Record {
            member: Uuid::nil(),
            seq: 3,
            at_us: 1,
            step: Step::Polled {
                messages: vec![(
                    Position { partition: 1, offset: 7 },
                    Message::Order { order_id: Uuid::nil(), lines: vec![("P1".into(), 2)] },
                )],
            },
        };
        let line = serde_json::to_string(&record).unwrap();
        assert!(line.contains(r#""step":"polled""#), "{line}");
        let text = format!("{line}\n{}", &line[..line.len() / 2]);
        assert_eq!(parse(&text).unwrap(), vec![record.clone()]);
        assert!(parse(&format!("{}\n{line}\n", &line[..10])).is_err(), "a bad line that is not the last is an error");
    }
}
