//! The order as the API accepts it and as it travels through Kafka, with the one set of
//! validation rules both the producer and the consumer apply.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use crate::lines::{Line, Lines, PlacedLine, MAX_LINES};
use crate::lines::MIXED_RULE;

pub const MAX_ID_LEN: usize = 64;
pub const MIN_QUANTITY: i64 = 1;
pub const MAX_QUANTITY: i64 = 10_000;
/// `orders.amount` is NUMERIC(12,2): anything larger could pass validation and then poison a
/// whole consumer batch, so the limit is enforced here.
pub const MAX_AMOUNT_CENTS: i64 = 999_999_999_999;
/// The hold an order may ask for, in seconds (issue #10); without one the consumer's
/// RESERVATION_TTL_SECONDS applies.
pub const MIN_HOLD_SECONDS: i64 = 1;
pub const MAX_HOLD_SECONDS: i64 = 86_400;

const FIELDS: [&str; 6] = ["customer_id", "product_id", "quantity", "amount", "lines", "hold_seconds"];
/// The fields of a single-line order, which a cart (`lines`) replaces.
const SINGLE_LINE_FIELDS: [&str; 3] = ["product_id", "quantity", "amount"];

/// One problem with one field of one order. `index` is set for batch entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: &str, message: impl Into<String>) -> Self {
        Self { index: None, field: field.to_owned(), message: message.into() }
    }
}

/// A validated order request, before it has an id: one line, or a cart of several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub customer_id: String,
    pub lines: Lines,
    /// How long the reservation holds (the whole cart's); `None` takes the consumer's default.
    pub hold_seconds: Option<u32>,
}

impl NewOrder {
    /// Validates one order object field by field, collecting every problem rather than the first,
    /// so that a client fixing a batch sees everything wrong at once.
    pub fn from_json(value: &Value) -> Result<Self, Vec<FieldError>> {
        let Some(object) = value.as_object() else {
            return Err(vec![FieldError::new("", "each order must be a JSON object")]);
        };
        let mut errors = Vec::new();
        for key in object.keys().filter(|key| !FIELDS.contains(&key.as_str())) {
            errors.push(FieldError::new(key, "unknown field"));
        }
        let customer_id = take(&mut errors, "customer_id", object.get("customer_id"), |v| {
            v.as_str().ok_or("must be a string").and_then(validate_id).map(str::to_owned)
        });
        // Optional, for a single line and a cart alike: absent (or null) means the default hold.
        let hold_seconds = match object.get("hold_seconds").filter(|v| !v.is_null()) {
            None => Some(None),
            Some(value) => take(&mut errors, "hold_seconds", Some(value), |v| {
                whole_number(v).ok_or(HOLD_RULE).and_then(validate_hold).map(Some)
            }),
        };
        if let Some(lines) = object.get("lines") {
            // A cart. Its lines replace the single-line fields; both at once is ambiguous.
            if SINGLE_LINE_FIELDS.iter().any(|field| object.contains_key(*field)) {
                errors.push(FieldError::new("lines", MIXED_RULE));
                return Err(errors);
            }
            return match (customer_id, crate::lines::from_json(lines)) {
                (Some(customer_id), Ok(lines)) if errors.is_empty() => {
                    Ok(Self { customer_id, lines, hold_seconds: hold_seconds.flatten() })
                }
                (_, Err(found)) => {
                    errors.extend(found);
                    Err(errors)
                }
                _ => Err(errors),
            };
        }
        let product_id = take(&mut errors, "product_id", object.get("product_id"), |v| {
            v.as_str().ok_or("must be a string").and_then(validate_id).map(str::to_owned)
        });
        let quantity = take(&mut errors, "quantity", object.get("quantity"), |v| {
            whole_number(v).ok_or(QUANTITY_RULE).and_then(validate_quantity)
        });
        let amount_cents = take(&mut errors, "amount", object.get("amount"), |v| {
            v.as_f64().ok_or("must be a number").and_then(amount_to_cents)
        });
        match (customer_id, product_id, quantity, amount_cents, hold_seconds) {
            (Some(customer_id), Some(product_id), Some(quantity), Some(amount_cents), Some(hold_seconds)) if errors.is_empty() => {
                Ok(Self { hold_seconds, ..Self::single(customer_id, product_id, quantity, amount_cents) })
            }
            _ => Err(errors),
        }
    }

    /// A single-line order with the default hold.
    pub fn single(customer_id: impl Into<String>, product_id: impl Into<String>, quantity: i32, amount_cents: i64) -> Self {
        Self {
            customer_id: customer_id.into(),
            lines: Lines::One(Line { product_id: product_id.into(), quantity, amount_cents }),
            hold_seconds: None,
        }
    }
}

/// The typed shape of a valid order: the fast path. Anything it cannot take goes to
/// `NewOrder::from_json`, which names every problem. A field that is present must hold a
/// value (`present`): `"product_id": null` is not the same as no product_id.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderInput {
    customer_id: String,
    #[serde(default, deserialize_with = "present")]
    product_id: Option<String>,
    #[serde(default, deserialize_with = "present_whole_number")]
    quantity: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    amount: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    lines: Option<Vec<LineInput>>,
    #[serde(default, deserialize_with = "deserialize_optional_whole_number")]
    hold_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineInput {
    product_id: String,
    #[serde(deserialize_with = "deserialize_whole_number")]
    quantity: i64,
    amount: f64,
}

fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

fn present_whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    deserialize_whole_number(deserializer).map(Some)
}

impl OrderInput {
    fn validate(self) -> Option<NewOrder> {
        validate_id(&self.customer_id).ok()?;
        let hold_seconds = match self.hold_seconds {
            None => None,
            Some(seconds) => Some(validate_hold(seconds).ok()?),
        };
        let lines = match (self.product_id, self.quantity, self.amount, self.lines) {
            (Some(product_id), Some(quantity), Some(amount), None) => Lines::One(crate::lines::line(product_id, quantity, amount).ok()?),
            (None, None, None, Some(lines)) => {
                let lines = lines.into_iter().map(|l| PlacedLine { product_id: l.product_id, quantity: l.quantity, amount: l.amount });
                crate::lines::from_typed(lines.collect()).ok()?
            }
            _ => return None,
        };
        Some(NewOrder { customer_id: self.customer_id, lines, hold_seconds })
    }
}

impl NewOrder {
    /// Parses and validates one order from JSON text. `None` means "not valid": call
    /// `from_json` on the parsed value for the detailed errors.
    pub fn parse_valid(json: &str) -> Option<Self> {
        serde_json::from_str::<OrderInput>(json).ok()?.validate()
    }

    /// Parses and validates a JSON array of orders, all or nothing; `None` as above.
    pub fn parse_valid_batch(json: &str) -> Option<Vec<Self>> {
        serde_json::from_str::<Vec<OrderInput>>(json).ok()?.into_iter().map(OrderInput::validate).collect()
    }
}

fn take<T>(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<&Value>,
    check: impl FnOnce(&Value) -> Result<T, &'static str>,
) -> Option<T> {
    let Some(value) = value else {
        errors.push(FieldError::new(field, "is required"));
        return None;
    };
    check(value).map_err(|message| errors.push(FieldError::new(field, message))).ok()
}

pub(crate) const QUANTITY_RULE: &str = "must be an integer from 1 to 10000";
const HOLD_RULE: &str = "must be an integer from 1 to 86400";

pub fn validate_hold(seconds: i64) -> Result<u32, &'static str> {
    if !(MIN_HOLD_SECONDS..=MAX_HOLD_SECONDS).contains(&seconds) {
        return Err(HOLD_RULE);
    }
    Ok(seconds as u32)
}

/// `deserialize_whole_number` for an optional field; null counts as absent.
fn deserialize_optional_whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(value) => whole_number(&value).map(Some).ok_or_else(|| serde::de::Error::custom("expected an integer")),
    }
}

/// An integer, also when written as a whole float (`5.0`): JSON Schema counts that as an
/// integer, and so do many JSON encoders.
pub fn whole_number(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

/// serde adapter for `whole_number`, for typed request bodies.
pub fn deserialize_whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let value = Value::deserialize(deserializer)?;
    whole_number(&value).ok_or_else(|| serde::de::Error::custom("expected an integer"))
}

pub fn validate_id(id: &str) -> Result<&str, &'static str> {
    if id.is_empty() {
        return Err("must not be empty");
    }
    if id.chars().count() > MAX_ID_LEN {
        return Err("must be at most 64 characters");
    }
    if id.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(id)
}

pub fn validate_quantity(quantity: i64) -> Result<i32, &'static str> {
    if !(MIN_QUANTITY..=MAX_QUANTITY).contains(&quantity) {
        return Err(QUANTITY_RULE);
    }
    Ok(quantity as i32)
}

/// Converts an amount to whole cents, refusing anything a NUMERIC(12,2) column would round.
pub fn amount_to_cents(amount: f64) -> Result<i64, &'static str> {
    if !amount.is_finite() || amount < 0.0 {
        return Err("must be a finite number >= 0");
    }
    let scaled = amount * 100.0;
    let cents = scaled.round();
    // f64 cannot hold most decimals exactly (6499.95 * 100 = 649994.9999999999): allow a few
    // units in the last place of the scaled value, nothing more. (A tolerance relative to the
    // amount itself once let 4560061503.814871 through; schemathesis found it.)
    if (scaled - cents).abs() > scaled.abs() * 8.0 * f64::EPSILON {
        return Err("must have at most 2 decimal places");
    }
    if cents > MAX_AMOUNT_CENTS as f64 {
        return Err("must be at most 9999999999.99");
    }
    Ok(cents as i64)
}

/// The message published to `orders-placed`: the order plus its id and acceptance time.
/// A single-line order carries `product_id`, `quantity` and `amount`, byte for byte as before
/// carts existed; a cart carries `lines` instead (2 to 50). `validate` accepts exactly one of
/// the two shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacedOrder {
    pub order_id: Uuid,
    pub customer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<PlacedLine>>,
    #[serde(serialize_with = "serialize_rfc3339", deserialize_with = "deserialize_rfc3339")]
    pub placed_at: DateTime<Utc>,
    /// Only when the client asked for a hold: messages without one stay byte for byte what
    /// they were before holds existed, and those older messages parse as "default hold".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_seconds: Option<i64>,
}

/// `2026-11-22T14:10:59.478145222Z`, always nine fraction digits. chrono's `Serialize`
/// formats through `core::fmt` one character at a time, which showed in the producer's
/// profile; this writes the fixed-width form into a stack buffer.
pub(crate) fn serialize_rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    use chrono::{Datelike, Timelike};
    if !(0..=9999).contains(&at.year()) || at.nanosecond() >= 1_000_000_000 {
        // A leap second (or a clock past RFC 3339's four-digit years): chrono's own form.
        return serializer.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    }
    let mut text = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |end: usize, width: usize, mut value: u32| {
        for position in (end - width..end).rev() {
            text[position] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(4, 4, at.year() as u32);
    put(7, 2, at.month());
    put(10, 2, at.day());
    put(13, 2, at.hour());
    put(16, 2, at.minute());
    put(19, 2, at.second());
    put(29, 9, at.nanosecond());
    serializer.serialize_str(std::str::from_utf8(&text).expect("ASCII digits"))
}

/// chrono's own `Deserialize` goes through its general format parser; the RFC 3339 parser
/// reads the same timestamps at a fraction of the cost, which shows at 100k messages/s.
pub(crate) fn deserialize_rfc3339<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
    DateTime::parse_from_rfc3339(&text).map(|at| at.with_timezone(&Utc)).map_err(serde::de::Error::custom)
}

/// Why a message from Kafka cannot become an order.
#[derive(Debug, thiserror::Error)]
pub enum InvalidMessage {
    #[error("message has no payload")]
    Empty,
    #[error("payload is not a valid order message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// `field` names a line's field with its index: `lines[2].quantity`.
    #[error("{field} {message}")]
    Invalid { field: String, message: &'static str },
}

/// A placed order that passed validation again on the consumer side: a broken or hostile
/// producer writing straight to the topic must not be able to poison a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidOrder {
    pub order_id: Uuid,
    pub customer_id: String,
    pub lines: Lines,
    pub placed_at: DateTime<Utc>,
    pub hold_seconds: Option<u32>,
}

impl ValidOrder {
    /// Every line, a single-line order's one line included.
    pub fn lines(&self) -> &[Line] {
        self.lines.as_slice()
    }
}

impl PlacedOrder {
    pub fn new(order: NewOrder, order_id: Uuid, placed_at: DateTime<Utc>) -> Self {
        let (product_id, quantity, amount, lines) = match order.lines {
            Lines::One(line) => (Some(line.product_id), Some(i64::from(line.quantity)), Some(line.amount_cents as f64 / 100.0), None),
            Lines::Cart(lines) => (None, None, None, Some(lines.iter().map(PlacedLine::from).collect())),
        };
        let hold_seconds = order.hold_seconds.map(i64::from);
        Self { order_id, customer_id: order.customer_id, product_id, quantity, amount, lines, placed_at, hold_seconds }
    }

    pub fn from_payload(payload: Option<&[u8]>) -> Result<ValidOrder, InvalidMessage> {
        let payload = payload.filter(|p| !p.is_empty()).ok_or(InvalidMessage::Empty)?;
        let placed: PlacedOrder = serde_json::from_slice(payload)?;
        placed.validate()
    }

    pub fn validate(self) -> Result<ValidOrder, InvalidMessage> {
        let invalid = |field: &str, message| InvalidMessage::Invalid { field: field.to_owned(), message };
        validate_id(&self.customer_id).map_err(|m| invalid("customer_id", m))?;
        let lines = match (self.product_id, self.quantity, self.amount, self.lines) {
            (Some(product_id), Some(quantity), Some(amount), None) => {
                Lines::One(crate::lines::line(product_id, quantity, amount).map_err(|(field, m)| invalid(field, m))?)
            }
            (None, None, None, Some(lines)) => {
                crate::lines::from_typed(lines).map_err(|(field, message)| InvalidMessage::Invalid { field, message })?
            }
            (_, _, _, Some(_)) => return Err(invalid("lines", MIXED_RULE)),
            (product_id, quantity, _, None) => {
                let missing = if product_id.is_none() { "product_id" } else if quantity.is_none() { "quantity" } else { "amount" };
                return Err(invalid(missing, "is required"));
            }
        };
        let hold_seconds = self.hold_seconds.map(validate_hold).transpose().map_err(|m| invalid("hold_seconds", m))?;
        Ok(ValidOrder { order_id: self.order_id, customer_id: self.customer_id, lines, placed_at: self.placed_at, hold_seconds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn accepts_the_documented_example() {
        let order = NewOrder::from_json(&json!({
            "customer_id": "CUST001", "product_id": "PROD001", "quantity": 5, "amount": 6499.95
        }))
        .unwrap();
        assert_eq!(order, NewOrder::single("CUST001", "PROD001", 5, 649_995));
    }

    #[test]
    fn reports_every_bad_field_at_once() {
        let errors = NewOrder::from_json(&json!({
            "customer_id": "", "product_id": 7, "quantity": 0, "amount": -1, "colour": "red"
        }))
        .unwrap_err();
        let mut names = fields(errors);
        names.sort();
        assert_eq!(names, ["amount", "colour", "customer_id", "product_id", "quantity"]);
    }

    #[test]
    fn missing_fields_are_named() {
        let errors = NewOrder::from_json(&json!({"customer_id": "C"})).unwrap_err();
        assert_eq!(fields(errors), ["product_id", "quantity", "amount"]);
    }

    #[test]
    fn not_an_object_is_refused() {
        assert!(NewOrder::from_json(&json!([1, 2])).is_err());
        assert!(NewOrder::from_json(&json!("order")).is_err());
    }

    #[test]
    fn id_rules() {
        assert!(validate_id(&"x".repeat(64)).is_ok());
        assert!(validate_id(&"x".repeat(65)).is_err());
        assert!(validate_id("é".repeat(64).as_str()).is_ok(), "limit counts characters, not bytes");
        assert!(validate_id("a\u{0}b").is_err());
        assert!(validate_id("a\nb").is_err());
        assert!(validate_id("").is_err());
    }

    #[test]
    fn quantity_bounds() {
        assert_eq!(validate_quantity(1), Ok(1));
        assert_eq!(validate_quantity(10_000), Ok(10_000));
        assert!(validate_quantity(0).is_err());
        assert!(validate_quantity(10_001).is_err());
        assert!(validate_quantity(-5).is_err());
        let fractional = NewOrder::from_json(&json!({
            "customer_id": "C", "product_id": "P", "quantity": 2.5, "amount": 1
        }));
        assert_eq!(fields(fractional.unwrap_err()), ["quantity"]);
        let whole = NewOrder::from_json(&json!({"customer_id": "C", "product_id": "P", "quantity": 2.0, "amount": 1}));
        assert_eq!(whole.unwrap().lines.as_slice()[0].quantity, 2, "2.0 is an integer in JSON Schema terms");
    }

    #[test]
    fn amount_rules() {
        assert_eq!(amount_to_cents(0.0), Ok(0));
        assert_eq!(amount_to_cents(0.1), Ok(10));
        assert_eq!(amount_to_cents(19.99), Ok(1999));
        assert_eq!(amount_to_cents(9_999_999_999.99), Ok(MAX_AMOUNT_CENTS));
        assert!(amount_to_cents(10_000_000_000.0).is_err());
        assert!(amount_to_cents(1.234).is_err());
        assert!(amount_to_cents(4_560_061_503.814_871).is_err(), "large amounts get no extra decimals");
        assert!(amount_to_cents(9_999_999_999.999).is_err());
        assert_eq!(amount_to_cents(123_456_789.12), Ok(12_345_678_912));
        assert_eq!(amount_to_cents(0.07), Ok(7));
        assert_eq!(amount_to_cents(1e-300), Err("must have at most 2 decimal places"));
        assert!(amount_to_cents(-0.01).is_err());
        assert!(amount_to_cents(f64::NAN).is_err());
        assert!(amount_to_cents(f64::INFINITY).is_err());
    }

    #[test]
    fn fast_path_agrees_with_the_detailed_path() {
        let cases = [
            r#"{"customer_id": "C", "product_id": "P", "quantity": 2, "amount": 10.25}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 2.0, "amount": 10.25}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 2.5, "amount": 10.25}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 0, "amount": 1}"#,
            r#"{"customer_id": "", "product_id": "P", "quantity": 1, "amount": 1}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1.001}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1, "x": 1}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 1}"#,
            r#"{"customer_id": "C\u0007", "product_id": "P", "quantity": 1, "amount": 1}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1, "hold_seconds": 60}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1, "hold_seconds": 60.0}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1, "hold_seconds": null}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1, "hold_seconds": 0}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1, "hold_seconds": 86401}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1, "hold_seconds": 1.5}"#,
            r#"{"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1, "hold_seconds": "60"}"#,
            r#"{"customer_id": "C", "lines": [{"product_id": "A", "quantity": 1, "amount": 1}, {"product_id": "B", "quantity": 2.0, "amount": 0}]}"#,
            r#"{"customer_id": "C", "lines": [{"product_id": "A", "quantity": 1, "amount": 1}]}"#,
            r#"{"customer_id": "C", "lines": []}"#,
            r#"{"customer_id": "C", "lines": null}"#,
            r#"{"customer_id": "C", "lines": [{"product_id": "A", "quantity": 1, "amount": 1}, {"product_id": "A", "quantity": 1, "amount": 1}]}"#,
            r#"{"customer_id": "C", "lines": [{"product_id": "A", "quantity": 1, "amount": 1}, {"product_id": "B", "quantity": 0, "amount": 1}]}"#,
            r#"{"customer_id": "C", "lines": [{"product_id": "A", "quantity": 1, "amount": 1, "x": 1}, {"product_id": "B", "quantity": 1, "amount": 1}]}"#,
            r#"{"customer_id": "C", "lines": [{"product_id": "A", "quantity": 1}, {"product_id": "B", "quantity": 1, "amount": 1}]}"#,
            r#"{"customer_id": "C", "product_id": "P", "lines": [{"product_id": "A", "quantity": 1, "amount": 1}, {"product_id": "B", "quantity": 1, "amount": 1}]}"#,
            r#"{"customer_id": "C", "product_id": null, "quantity": 1, "amount": 1}"#,
            r#"{"customer_id": "C", "lines": "A"}"#,
            r#"{"customer_id": "C", "hold_seconds": 30, "lines": [{"product_id": "A", "quantity": 1, "amount": 1}, {"product_id": "B", "quantity": 1, "amount": 1}]}"#,
            r#"{"customer_id": "C", "hold_seconds": 0, "lines": [{"product_id": "A", "quantity": 1, "amount": 1}, {"product_id": "B", "quantity": 1, "amount": 1}]}"#,
        ];
        for case in cases {
            let detailed = NewOrder::from_json(&serde_json::from_str(case).unwrap()).ok();
            assert_eq!(NewOrder::parse_valid(case), detailed, "{case}");
        }
        let batch = format!("[{},{}]", cases[0], cases[0]);
        assert_eq!(NewOrder::parse_valid_batch(&batch).map(|b| b.len()), Some(2));
        let mixed = format!("[{},{}]", cases[0], cases[2]);
        assert_eq!(NewOrder::parse_valid_batch(&mixed), None);
    }

    #[test]
    fn placed_at_is_written_as_rfc3339_and_read_back_exactly() {
        use chrono::TimeZone;
        let cases = [
            Utc.with_ymd_and_hms(2026, 11, 22, 14, 10, 59).unwrap() + chrono::Duration::nanoseconds(478_145_222),
            Utc.with_ymd_and_hms(2001, 2, 3, 4, 5, 6).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap() + chrono::Duration::nanoseconds(999_999_999),
        ];
        for placed_at in cases {
            let order = PlacedOrder {
                order_id: Uuid::now_v7(),
                customer_id: "C".into(),
                product_id: Some("P".into()),
                quantity: Some(1),
                amount: Some(1.0),
                lines: None,
                placed_at,
                hold_seconds: None,
            };
            let json = serde_json::to_value(&order).unwrap();
            let text = json["placed_at"].as_str().unwrap();
            assert_eq!(DateTime::parse_from_rfc3339(text).unwrap(), placed_at, "{text}");
            assert_eq!(serde_json::from_value::<PlacedOrder>(json).unwrap(), order);
        }
        let text = serde_json::to_value(PlacedOrder { placed_at: cases[0], ..PlacedOrder::new(
            NewOrder::single("C", "P", 1, 100), Uuid::nil(), cases[0]) }).unwrap();
        assert_eq!(text["placed_at"], "2026-11-22T14:10:59.478145222Z");
    }

    #[test]
    fn hold_seconds_bounds_and_field_name() {
        let hold = |h: Value| NewOrder::from_json(&json!({"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1, "hold_seconds": h}));
        assert_eq!(hold(json!(1)).unwrap().hold_seconds, Some(1));
        assert_eq!(hold(json!(86_400)).unwrap().hold_seconds, Some(86_400));
        assert_eq!(hold(Value::Null).unwrap().hold_seconds, None);
        for bad in [json!(0), json!(86_401), json!(-1), json!(2.5), json!("60")] {
            assert_eq!(fields(hold(bad.clone()).unwrap_err()), ["hold_seconds"], "{bad}");
        }
    }

    /// Placement messages without a hold must stay byte for byte what producers wrote before
    /// holds existed (consumers of the topic outside orderflow may compare or hash them), and
    /// those older messages must still parse.
    #[test]
    fn a_message_without_hold_is_unchanged_and_old_messages_parse() {
        use chrono::TimeZone;
        let placed_at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let order = NewOrder::single("C1", "P1", 2, 1050);
        let id = Uuid::parse_str("01900000-0000-7000-8000-000000000001").unwrap();
        let text = serde_json::to_string(&PlacedOrder::new(order.clone(), id, placed_at)).unwrap();
        let before_holds = r#"{"order_id":"01900000-0000-7000-8000-000000000001","customer_id":"C1","product_id":"P1","quantity":2,"amount":10.5,"placed_at":"2026-01-02T03:04:05.000000000Z"}"#;
        assert_eq!(text, before_holds);
        assert_eq!(PlacedOrder::from_payload(Some(before_holds.as_bytes())).unwrap().hold_seconds, None);

        let held = PlacedOrder::new(NewOrder { hold_seconds: Some(30), ..order }, id, placed_at);
        let text = serde_json::to_string(&held).unwrap();
        assert!(text.ends_with(r#","hold_seconds":30}"#), "{text}");
        assert_eq!(PlacedOrder::from_payload(Some(text.as_bytes())).unwrap().hold_seconds, Some(30));
        let mut bad = held;
        bad.hold_seconds = Some(0);
        assert!(matches!(
            PlacedOrder::from_payload(Some(&serde_json::to_vec(&bad).unwrap())),
            Err(InvalidMessage::Invalid { field, .. }) if field == "hold_seconds"
        ));
    }

    #[test]
    fn a_cart_takes_a_hold_for_all_its_lines() {
        let cart = json!({"customer_id": "C", "hold_seconds": 45,
            "lines": [{"product_id": "A", "quantity": 1, "amount": 1}, {"product_id": "B", "quantity": 2, "amount": 1}]});
        let order = NewOrder::from_json(&cart).unwrap();
        assert_eq!((order.hold_seconds, order.lines.as_slice().len()), (Some(45), 2));
        assert_eq!(NewOrder::parse_valid(&cart.to_string()), Some(order.clone()), "the fast path agrees");
        let placed = PlacedOrder::new(order, Uuid::nil(), Utc::now());
        let text = serde_json::to_string(&placed).unwrap();
        assert!(text.ends_with(r#","hold_seconds":45}"#), "{text}");
        assert_eq!(PlacedOrder::from_payload(Some(text.as_bytes())).unwrap().hold_seconds, Some(45));
        let mut bad = cart;
        bad["hold_seconds"] = json!(0);
        assert_eq!(fields(NewOrder::from_json(&bad).unwrap_err()), ["hold_seconds"]);
    }

    #[test]
    fn message_round_trip_and_revalidation() {
        let order = NewOrder::from_json(&json!({
            "customer_id": "C1", "product_id": "P1", "quantity": 3, "amount": 10.5
        }))
        .unwrap();
        let placed = PlacedOrder::new(order, Uuid::now_v7(), Utc::now());
        let bytes = serde_json::to_vec(&placed).unwrap();
        let valid = PlacedOrder::from_payload(Some(&bytes)).unwrap();
        assert_eq!(valid.lines(), [Line { product_id: "P1".into(), quantity: 3, amount_cents: 1050 }]);
        assert_eq!(valid.order_id, placed.order_id);

        assert!(matches!(PlacedOrder::from_payload(None), Err(InvalidMessage::Empty)));
        assert!(matches!(PlacedOrder::from_payload(Some(b"{oops")), Err(InvalidMessage::Malformed(_))));
        let mut bad = placed.clone();
        bad.quantity = Some(0);
        let bytes = serde_json::to_vec(&bad).unwrap();
        assert!(matches!(
            PlacedOrder::from_payload(Some(&bytes)),
            Err(InvalidMessage::Invalid { field, .. }) if field == "quantity"
        ));
    }

    #[test]
    fn a_single_line_message_is_byte_for_byte_what_it_was_before_carts() {
        use chrono::TimeZone;
        let placed_at = Utc.with_ymd_and_hms(2026, 11, 22, 14, 10, 59).unwrap() + chrono::Duration::nanoseconds(478_145_222);
        let id: Uuid = "01935a2b-0c1d-7e2f-8a3b-4c5d6e7f8091".parse().unwrap();
        let placed = PlacedOrder::new(NewOrder::single("CUST001", "PROD001", 5, 649_995), id, placed_at);
        // The exact bytes the producer published before this change.
        let before = r#"{"order_id":"01935a2b-0c1d-7e2f-8a3b-4c5d6e7f8091","customer_id":"CUST001","product_id":"PROD001","quantity":5,"amount":6499.95,"placed_at":"2026-11-22T14:10:59.478145222Z"}"#;
        assert_eq!(serde_json::to_string(&placed).unwrap(), before);
        let valid = PlacedOrder::from_payload(Some(before.as_bytes())).unwrap();
        assert_eq!(valid.lines, Lines::One(Line { product_id: "PROD001".into(), quantity: 5, amount_cents: 649_995 }));
        assert_eq!((valid.order_id, valid.placed_at), (id, placed_at));
    }

    #[test]
    fn a_cart_message_carries_its_lines_and_is_validated_again() {
        let order = NewOrder::from_json(&json!({"customer_id": "C1", "lines": [
            {"product_id": "B", "quantity": 2, "amount": 3.5}, {"product_id": "A", "quantity": 1, "amount": 0.1}
        ]}))
        .unwrap();
        let placed = PlacedOrder::new(order.clone(), Uuid::now_v7(), Utc::now());
        let json = serde_json::to_value(&placed).unwrap();
        assert!(json.get("product_id").is_none() && json.get("quantity").is_none() && json.get("amount").is_none(), "{json}");
        assert_eq!(json["lines"], json!([{"product_id": "B", "quantity": 2, "amount": 3.5}, {"product_id": "A", "quantity": 1, "amount": 0.1}]));
        let valid = PlacedOrder::from_payload(Some(&serde_json::to_vec(&placed).unwrap())).unwrap();
        assert_eq!(valid.lines, order.lines);

        let reject = |mut bad: Value, field: &str| {
            let error = PlacedOrder::from_payload(Some(&serde_json::to_vec(&bad.take()).unwrap())).unwrap_err();
            assert!(matches!(&error, InvalidMessage::Invalid { field: f, .. } if f == field), "{error} for {field}");
        };
        let mut duplicate = json.clone();
        duplicate["lines"][1]["product_id"] = json!("B");
        reject(duplicate, "lines[1].product_id");
        let mut mixed = json.clone();
        mixed["product_id"] = json!("B");
        reject(mixed, "lines");
        let mut empty = json.clone();
        empty["lines"] = json!([]);
        reject(empty, "lines");
        let mut too_many = json.clone();
        too_many["lines"] = json!((0..51).map(|i| json!({"product_id": format!("P{i}"), "quantity": 1, "amount": 1})).collect::<Vec<_>>());
        reject(too_many, "lines");
        let mut bad_line = json.clone();
        bad_line["lines"][0]["quantity"] = json!(10_001);
        reject(bad_line, "lines[0].quantity");
        let mut neither = json;
        neither.as_object_mut().unwrap().remove("lines");
        reject(neither, "product_id");
    }

    #[test]
    fn mixed_shapes_are_refused_naming_lines() {
        let errors = NewOrder::from_json(&json!({"customer_id": "C", "quantity": 1,
            "lines": [{"product_id": "A", "quantity": 1, "amount": 1}]}))
        .unwrap_err();
        assert_eq!(fields(errors), ["lines"]);
        let errors = NewOrder::from_json(&json!({"lines": [{"product_id": "A", "quantity": 0, "amount": 1}]})).unwrap_err();
        assert_eq!(fields(errors), ["customer_id", "lines[0].quantity"]);
    }
}
