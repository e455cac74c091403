//! The `order-events` topic: one event per committed change of an order, keyed by
//! customer_id. README ("Events") documents the schema for other services.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::order::{deserialize_rfc3339, serialize_rfc3339};

/// Default name of the topic.
pub const EVENTS_TOPIC: &str = "order-events";

/// Namespace of the UUIDv5 event ids (a fixed random UUID: only orderflow makes these ids).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x5c1d_38a4_6e0b_4f57_9a1e_2b7c_d04f_e811);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Reserved,
    Rejected,
    Confirmed,
    Cancelled,
    Expired,
    ConfirmRefused,
    CancelRefused,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Rejected => "rejected",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::ConfirmRefused => "confirm_refused",
            Self::CancelRefused => "cancel_refused",
        }
    }

    /// Whether the event ends the order's hold for good (a final state).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Rejected | Self::Confirmed | Self::Cancelled | Self::Expired)
    }
}

/// The stable id of one change: the same change re-published (after a crash, or rebuilt for
/// a redelivered message) has the same id. Changes of an order itself (placement, expiry) are
/// named by the order_id; changes a command made (confirmed, cancelled, refused) by the
/// command_id.
pub fn event_id(subject: Uuid, kind: EventType) -> Uuid {
    let mut name = [0_u8; 16 + 16];
    name[..16].copy_from_slice(subject.as_bytes());
    let tag = kind.as_str().as_bytes();
    name[16..16 + tag.len()].copy_from_slice(tag);
    Uuid::new_v5(&EVENT_NAMESPACE, &name[..16 + tag.len()])
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub order_id: Uuid,
    pub customer_id: String,
    /// A single-line order's product and quantity, as before carts. Null for a cart (see
    /// `lines`) and for the refusal of a command whose order never arrived (`unknown_order`).
    pub product_id: Option<String>,
    pub quantity: Option<i32>,
    /// Every line of the order, a single-line order's one line included: what the change
    /// moved (a cart moves all its lines together). Empty (absent) only for an
    /// `unknown_order` refusal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<EventLine>,
    /// Why: a rejection's or refusal's reason; null for reserved, confirmed, cancelled, and
    /// `hold_expired` for expired.
    pub reason: Option<String>,
    /// The database time of the change (its transaction's timestamp).
    #[serde(serialize_with = "serialize_rfc3339", deserialize_with = "deserialize_rfc3339")]
    pub occurred_at: DateTime<Utc>,
    /// Only on `reserved`: when the hold ends unless confirmed or cancelled (absent for holds
    /// that never expire).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_rfc3339")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The command behind `confirmed`, `cancelled` and the refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
}

/// One line of an event's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLine {
    pub product_id: String,
    pub quantity: i32,
}

impl OrderEvent {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serializes")
    }
}

mod optional_rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => crate::order::serialize_rfc3339(at, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let text = Option::<std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.map(|text| DateTime::parse_from_rfc3339(&text).map(|at| at.with_timezone(&Utc)).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_change_and_differ_between_changes() {
        let order = Uuid::parse_str("01900000-0000-7000-8000-000000000001").unwrap();
        assert_eq!(event_id(order, EventType::Reserved), event_id(order, EventType::Reserved));
        assert_ne!(event_id(order, EventType::Reserved), event_id(order, EventType::Expired));
        assert_ne!(event_id(order, EventType::Expired), event_id(Uuid::now_v7(), EventType::Expired));
        assert_eq!(event_id(order, EventType::Reserved).get_version_num(), 5);
        // Pinned: a change of this function would give re-published events new ids.
        assert_eq!(event_id(order, EventType::Reserved).to_string(), PINNED_RESERVED_ID);
    }

    // Computed independently: Python `uuid.UUID(bytes=sha1(namespace + order_id + b"reserved")[:16], version=5)`.
    const PINNED_RESERVED_ID: &str = "fc4f6a8e-957e-5dc5-8c6e-ab7a5fc678c1";

    #[test]
    fn events_round_trip_with_the_documented_field_names() {
        let event = OrderEvent {
            event_id: Uuid::now_v7(),
            kind: EventType::ConfirmRefused,
            order_id: Uuid::now_v7(),
            customer_id: "C".into(),
            product_id: Some("P".into()),
            quantity: Some(2),
            lines: vec![EventLine { product_id: "P".into(), quantity: 2 }],
            reason: Some("hold_expired".into()),
            occurred_at: Utc::now(),
            expires_at: None,
            command_id: Some(Uuid::now_v7()),
        };
        let value: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(value["type"], "confirm_refused");
        assert!(value.get("expires_at").is_none());
        assert_eq!(value["lines"], serde_json::json!([{"product_id": "P", "quantity": 2}]));
        for field in ["event_id", "order_id", "customer_id", "product_id", "quantity", "lines", "reason", "occurred_at", "command_id"] {
            assert!(value.get(field).is_some(), "{field}");
        }
        assert_eq!(serde_json::from_value::<OrderEvent>(value).unwrap(), event);
        let reserved = OrderEvent { kind: EventType::Reserved, expires_at: Some(Utc::now()), reason: None, command_id: None, ..event };
        assert_eq!(serde_json::from_slice::<OrderEvent>(&reserved.to_json()).unwrap(), reserved);
    }
}
