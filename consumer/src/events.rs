//! Events of committed changes: built from what a transaction decided, or rebuilt from the
//! stored rows when a redelivered message finds its change already in the database (same
//! event_id, see `orderflow_common::events::event_id`), and published to `order-events`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::error::KafkaError;
use uuid::Uuid;

use orderflow_common::acked::{AckedProducer, Outgoing, PublishError};
use orderflow_common::command::CommandKind;
use orderflow_common::config::KafkaSettings;
use orderflow_common::events::{event_id, EventLine, EventType, OrderEvent};
use orderflow_common::kafka;

use crate::lifecycle::{Change, HeldLine, Hold, Refusal, Status};
use crate::stats::Stats;

/// A single-line order's line (its `product_id` and `quantity` fields, as before carts);
/// `None` for a cart.
fn single(hold: &Hold) -> Option<&HeldLine> {
    match hold.lines.as_slice() {
        [line] => Some(line),
        _ => None,
    }
}

/// Every line of the order, for the event's `lines`.
fn lines(hold: &Hold) -> Vec<EventLine> {
    hold.lines.iter().map(|line| EventLine { product_id: line.product_id.clone(), quantity: line.quantity }).collect()
}

/// The event of a placement: `reserved` (with its deadline) or `rejected` (with why).
pub fn placed(order_id: Uuid, hold: &Hold, reason: Option<&str>, occurred_at: DateTime<Utc>) -> OrderEvent {
    let kind = if hold.status == Status::Rejected { EventType::Rejected } else { EventType::Reserved };
    OrderEvent {
        event_id: event_id(order_id, kind),
        kind,
        order_id,
        customer_id: hold.customer_id.clone(),
        product_id: single(hold).map(|line| line.product_id.clone()),
        quantity: single(hold).map(|line| line.quantity),
        lines: lines(hold),
        reason: (kind == EventType::Rejected).then(|| reason.unwrap_or_default().to_owned()),
        occurred_at,
        expires_at: if kind == EventType::Reserved { hold.expires_at } else { None },
        command_id: None,
    }
}

/// The event of an order's expiry (by the sweeper, or found by a late command).
pub fn expired(order_id: Uuid, hold: &Hold, occurred_at: DateTime<Utc>) -> OrderEvent {
    OrderEvent {
        event_id: event_id(order_id, EventType::Expired),
        kind: EventType::Expired,
        order_id,
        customer_id: hold.customer_id.clone(),
        product_id: single(hold).map(|line| line.product_id.clone()),
        quantity: single(hold).map(|line| line.quantity),
        lines: lines(hold),
        reason: Some(Change::Expire.reason().to_owned()),
        occurred_at,
        expires_at: None,
        command_id: None,
    }
}

/// What a command's decision says: applied (confirmed / cancelled) or refused with a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutcome<'a> {
    Applied,
    Refused(&'a str),
}

/// The event of a command's decision. `hold` is `None` only for a command whose order never
/// arrived (refused `unknown_order`): product and quantity are then unknown.
pub fn decided(
    command_id: Uuid,
    kind: CommandKind,
    order_id: Uuid,
    customer_id: &str,
    hold: Option<&Hold>,
    outcome: CommandOutcome<'_>,
    occurred_at: DateTime<Utc>,
) -> OrderEvent {
    let (event_kind, reason) = match (kind, outcome) {
        (CommandKind::Confirm, CommandOutcome::Applied) => (EventType::Confirmed, None),
        (CommandKind::Cancel, CommandOutcome::Applied) => (EventType::Cancelled, None),
        (CommandKind::Confirm, CommandOutcome::Refused(reason)) => (EventType::ConfirmRefused, Some(reason.to_owned())),
        (CommandKind::Cancel, CommandOutcome::Refused(reason)) => (EventType::CancelRefused, Some(reason.to_owned())),
    };
    OrderEvent {
        event_id: event_id(command_id, event_kind),
        kind: event_kind,
        order_id,
        customer_id: hold.map_or(customer_id, |hold| hold.customer_id.as_str()).to_owned(),
        product_id: hold.and_then(single).map(|line| line.product_id.clone()),
        quantity: hold.and_then(single).map(|line| line.quantity),
        lines: hold.map(lines).unwrap_or_default(),
        reason,
        occurred_at,
        expires_at: None,
        command_id: Some(command_id),
    }
}

impl<'a> CommandOutcome<'a> {
    pub fn of(refusal: Option<Refusal>) -> Self {
        refusal.map_or(Self::Applied, |refusal| Self::Refused(refusal.as_str()))
    }

    /// From `order_commands.outcome` and `.reason`; `None` for a pending command.
    pub fn stored(outcome: &str, reason: Option<&'a str>) -> Option<Self> {
        match (outcome, reason) {
            ("applied", _) => Some(Self::Applied),
            ("refused", Some(reason)) => Some(Self::Refused(reason)),
            _ => None,
        }
    }
}

/// An outbox row on its way to the topic: its key and the payload as stored.
pub struct StoredEvent {
    pub customer_id: String,
    pub payload: String,
}

impl Outgoing for StoredEvent {
    fn key(&self) -> &[u8] {
        self.customer_id.as_bytes()
    }

    fn write_payload(&self, buffer: &mut Vec<u8>) {
        buffer.extend_from_slice(self.payload.as_bytes());
    }
}

/// The producer of `order-events`: idempotent, acks=all, and every call waits for the
/// acknowledgement of each of its events.
pub struct EventPublisher {
    producer: AckedProducer,
    topic: String,
    stats: Arc<Stats>,
}

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

impl EventPublisher {
    pub fn new(settings: &KafkaSettings, topic: &str, stats: Arc<Stats>) -> Result<Self, KafkaError> {
        let mut config = kafka::client_config(settings);
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", PUBLISH_TIMEOUT.as_millis().to_string())
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            // Keyed by customer_id with the Java client's mapping, like orders-placed.
            .set("partitioner", "murmur2_random");
        kafka::apply_overrides(&mut config, settings);
        Ok(Self { producer: AckedProducer::new(&config, PUBLISH_TIMEOUT)?, topic: topic.to_owned(), stats })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes `events` and waits for every acknowledgement. `source` labels the metric:
    /// `batch` for events of the batch loop, `outbox` for the relay's.
    pub async fn publish<M: Outgoing>(&self, events: &[M], source: &'static str) -> Result<(), PublishError> {
        self.producer.publish(&self.topic, events).await?;
        metrics::counter!("order_events_published_total", "source" => source).increment(events.len() as u64);
        self.stats.record_events(events.len() as u64);
        Ok(())
    }

    pub fn flush(&self, timeout: Duration) {
        self.producer.flush(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(status: Status) -> Hold {
        Hold { customer_id: "C".into(), lines: vec![HeldLine { product_id: "P".into(), quantity: 2 }], status, expires_at: Some(Utc::now()) }
    }

    /// A redelivered message rebuilds its event from the stored row; the id must be the one
    /// the first attempt published, whatever happened to the order since.
    #[test]
    fn rebuilt_events_carry_the_ids_of_the_first_publication() {
        let (order, command, now) = (Uuid::now_v7(), Uuid::now_v7(), Utc::now());
        let first = placed(order, &hold(Status::Reserved), None, now);
        // Later the order was confirmed: its placement's event is still `reserved`.
        let rebuilt = placed(order, &hold(Status::Confirmed), Some("confirm_command"), now);
        assert_eq!((first.event_id, first.kind), (rebuilt.event_id, EventType::Reserved));
        assert_eq!(rebuilt.reason, None);
        let rejected = placed(order, &hold(Status::Rejected), Some("insufficient_stock"), now);
        assert_eq!((rejected.kind, rejected.reason.as_deref(), rejected.expires_at), (EventType::Rejected, Some("insufficient_stock"), None));

        let refused = decided(command, CommandKind::Confirm, order, "C", Some(&hold(Status::Expired)), CommandOutcome::of(Some(Refusal::HoldExpired)), now);
        let stored = CommandOutcome::stored("refused", Some("hold_expired")).unwrap();
        let again = decided(command, CommandKind::Confirm, order, "C", Some(&hold(Status::Expired)), stored, now);
        assert_eq!(refused, again);
        assert_eq!(refused.kind, EventType::ConfirmRefused);
        let unknown = decided(command, CommandKind::Cancel, order, "K", None, CommandOutcome::Refused("unknown_order"), now);
        assert_eq!((unknown.customer_id.as_str(), unknown.product_id.clone(), unknown.kind), ("K", None, EventType::CancelRefused));
        assert_eq!(CommandOutcome::stored("pending", None), None);
    }
}
