//! Confirm and cancel commands as they travel through `orders-placed`, next to the orders
//! they act on (same topic, same key, so a command comes after its order in its partition),
//! and the parsing of any message of that topic.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::order::{deserialize_rfc3339, serialize_rfc3339, validate_id, InvalidMessage, PlacedOrder, ValidOrder};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandKind {
    Confirm,
    Cancel,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirm => "confirm",
            Self::Cancel => "cancel",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "confirm" => Some(Self::Confirm),
            "cancel" => Some(Self::Cancel),
            _ => None,
        }
    }
}

/// The message the API publishes for `POST /orders/{id}/confirm` and `/cancel`. `command`
/// is what tells it apart from an order, which has no such field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderCommand {
    pub command: CommandKind,
    /// UUIDv7, one per request (an Idempotency-Key retry re-publishes the same one): the
    /// consumer decides each command_id once, however often it is delivered.
    pub command_id: Uuid,
    pub order_id: Uuid,
    /// The order's customer, which is also the message key.
    pub customer_id: String,
    #[serde(serialize_with = "serialize_rfc3339", deserialize_with = "deserialize_rfc3339")]
    pub issued_at: DateTime<Utc>,
}

/// A command that passed validation on the consumer side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCommand {
    pub kind: CommandKind,
    pub command_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub issued_at: DateTime<Utc>,
}

impl OrderCommand {
    pub fn validate(self) -> Result<ValidCommand, InvalidMessage> {
        validate_id(&self.customer_id).map_err(|message| InvalidMessage::Invalid { field: "customer_id".to_owned(), message })?;
        Ok(ValidCommand {
            kind: self.command,
            command_id: self.command_id,
            order_id: self.order_id,
            customer_id: self.customer_id,
            issued_at: self.issued_at,
        })
    }
}

/// One message of `orders-placed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Order(ValidOrder),
    Command(ValidCommand),
}

impl Inbound {
    /// Orders take the fast path first: they are nearly all the traffic. Anything that is
    /// not an order is tried as a command; if that fails too, the error reported is the
    /// command's when the payload names a `command`, else the order's.
    pub fn from_payload(payload: Option<&[u8]>) -> Result<Self, InvalidMessage> {
        let order_error = match PlacedOrder::from_payload(payload) {
            Ok(order) => return Ok(Self::Order(order)),
            Err(error) => error,
        };
        let Some(payload) = payload.filter(|p| !p.is_empty()) else { return Err(order_error) };
        match serde_json::from_slice::<OrderCommand>(payload) {
            Ok(command) => command.validate().map(Self::Command),
            Err(command_error) => {
                let names_command = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .is_some_and(|value| value.get("command").is_some());
                Err(if names_command { InvalidMessage::Malformed(command_error) } else { order_error })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(kind: CommandKind) -> OrderCommand {
        OrderCommand { command: kind, command_id: Uuid::now_v7(), order_id: Uuid::now_v7(), customer_id: "C1".into(), issued_at: Utc::now() }
    }

    #[test]
    fn commands_and_orders_share_the_topic_and_are_told_apart() {
        let cancel = command(CommandKind::Cancel);
        let bytes = serde_json::to_vec(&cancel).unwrap();
        assert!(std::str::from_utf8(&bytes).unwrap().starts_with(r#"{"command":"cancel","command_id":"#));
        match Inbound::from_payload(Some(&bytes)).unwrap() {
            Inbound::Command(valid) => {
                assert_eq!((valid.kind, valid.command_id, valid.order_id), (CommandKind::Cancel, cancel.command_id, cancel.order_id));
                assert_eq!(valid.issued_at, cancel.issued_at);
            }
            other => panic!("expected a command, got {other:?}"),
        }
        let order = br#"{"order_id":"01900000-0000-7000-8000-000000000001","customer_id":"C1","product_id":"P1","quantity":2,"amount":10.5,"placed_at":"2026-01-02T03:04:05Z"}"#;
        assert!(matches!(Inbound::from_payload(Some(order)), Ok(Inbound::Order(_))));
    }

    #[test]
    fn a_broken_command_names_the_command_problem() {
        let mut bad = serde_json::to_value(command(CommandKind::Confirm)).unwrap();
        bad["command"] = "refund".into();
        let error = Inbound::from_payload(Some(&serde_json::to_vec(&bad).unwrap())).unwrap_err();
        assert!(error.to_string().contains("refund"), "{error}");
        let mut empty_customer = command(CommandKind::Confirm);
        empty_customer.customer_id.clear();
        let error = Inbound::from_payload(Some(&serde_json::to_vec(&empty_customer).unwrap())).unwrap_err();
        assert!(matches!(error, InvalidMessage::Invalid { field, .. } if field == "customer_id"));
        // Neither an order nor a command: the order's error, as before commands existed.
        let error = Inbound::from_payload(Some(br#"{"customer_id": "C"}"#)).unwrap_err();
        assert!(error.to_string().contains("missing field"), "{error}");
        assert!(matches!(Inbound::from_payload(None), Err(InvalidMessage::Empty)));
    }
}
