//! An order's product lines: one (today's single-line order) or a cart of 2 to 50, each
//! product at most once. The rules here are shared by the API (`order::NewOrder`) and the
//! consumer's re-validation of messages (`order::PlacedOrder::validate`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::order::{amount_to_cents, validate_id, validate_quantity, whole_number, FieldError, QUANTITY_RULE};

/// At most this many lines per order. A cart is reserved in one transaction with one lock
/// per product, so the bound keeps one order from locking an unbounded set of rows.
pub const MAX_LINES: usize = 50;

const LINE_FIELDS: [&str; 3] = ["product_id", "quantity", "amount"];
pub(crate) const LINES_RULE: &str = "must hold 1 to 50 lines";
pub(crate) const DUPLICATE_RULE: &str = "repeats the product of an earlier line";
pub(crate) const MIXED_RULE: &str = "cannot be combined with product_id, quantity or amount";

/// One product line: what to reserve and what it costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub product_id: String,
    pub quantity: i32,
    pub amount_cents: i64,
}

/// An order's lines. A single line is kept inline (no second allocation, and its message and
/// row stay exactly as they were before carts); a cart holds 2 to `MAX_LINES` lines with
/// distinct products, in the order the client gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lines {
    One(Line),
    Cart(Vec<Line>),
}

impl Lines {
    pub fn as_slice(&self) -> &[Line] {
        match self {
            Self::One(line) => std::slice::from_ref(line),
            Self::Cart(lines) => lines,
        }
    }

    pub fn is_cart(&self) -> bool {
        matches!(self, Self::Cart(_))
    }

    /// A list of valid lines as an order's lines: one line is a single-line order, whatever
    /// shape the client used (documented in ARCHITECTURE, "Carts").
    fn from_vec(mut lines: Vec<Line>) -> Self {
        if lines.len() == 1 {
            return Self::One(lines.pop().expect("one line"));
        }
        Self::Cart(lines)
    }
}

/// A line as it travels in a cart message on `orders-placed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacedLine {
    pub product_id: String,
    pub quantity: i64,
    pub amount: f64,
}

impl From<&Line> for PlacedLine {
    fn from(line: &Line) -> Self {
        Self { product_id: line.product_id.clone(), quantity: i64::from(line.quantity), amount: line.amount_cents as f64 / 100.0 }
    }
}

/// The first problem of a list of typed lines, as (field, message): `lines[2].quantity`.
pub type LineProblem = (String, &'static str);

/// One typed line, validated.
pub fn line(product_id: String, quantity: i64, amount: f64) -> Result<Line, (&'static str, &'static str)> {
    validate_id(&product_id).map_err(|m| ("product_id", m))?;
    let quantity = validate_quantity(quantity).map_err(|m| ("quantity", m))?;
    let amount_cents = amount_to_cents(amount).map_err(|m| ("amount", m))?;
    Ok(Line { product_id, quantity, amount_cents })
}

/// Typed lines (the API's fast path and the consumer's messages), validated: 1 to
/// `MAX_LINES`, each valid, no product twice. Stops at the first problem.
pub fn from_typed(lines: Vec<PlacedLine>) -> Result<Lines, LineProblem> {
    if lines.is_empty() || lines.len() > MAX_LINES {
        return Err(("lines".to_owned(), LINES_RULE));
    }
    let mut valid = Vec::with_capacity(lines.len());
    for (index, placed) in lines.into_iter().enumerate() {
        let line = line(placed.product_id, placed.quantity, placed.amount).map_err(|(field, m)| (format!("lines[{index}].{field}"), m))?;
        valid.push(line);
    }
    if let Some((index, _)) = duplicates(valid.iter().map(|l| l.product_id.as_str())).first() {
        return Err((format!("lines[{index}].product_id"), DUPLICATE_RULE));
    }
    Ok(Lines::from_vec(valid))
}

/// `lines` of an order object in JSON, validated field by field: every problem, each named
/// with its line index (`lines[2].quantity`).
pub fn from_json(value: &Value) -> Result<Lines, Vec<FieldError>> {
    let Some(entries) = value.as_array() else {
        return Err(vec![FieldError::new("lines", "must be an array of lines")]);
    };
    if entries.is_empty() || entries.len() > MAX_LINES {
        return Err(vec![FieldError::new("lines", format!("{LINES_RULE}, this one has {}", entries.len()))]);
    }
    let mut errors = Vec::new();
    let mut valid = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let Some(object) = entry.as_object() else {
            errors.push(FieldError::new(&format!("lines[{index}]"), "each line must be a JSON object"));
            continue;
        };
        let named = |field: &str| format!("lines[{index}].{field}");
        for key in object.keys().filter(|key| !LINE_FIELDS.contains(&key.as_str())) {
            errors.push(FieldError::new(&named(key), "unknown field"));
        }
        let mut check = |field: &str, parse: &dyn Fn(&Value) -> Result<(), &'static str>| match object.get(field) {
            None => errors.push(FieldError::new(&named(field), "is required")),
            Some(value) => {
                if let Err(message) = parse(value) {
                    errors.push(FieldError::new(&named(field), message));
                }
            }
        };
        check("product_id", &|v| v.as_str().ok_or("must be a string").and_then(validate_id).map(drop));
        check("quantity", &|v| whole_number(v).ok_or(QUANTITY_RULE).and_then(validate_quantity).map(drop));
        check("amount", &|v| v.as_f64().ok_or("must be a number").and_then(amount_to_cents).map(drop));
        let typed = (object.get("product_id").and_then(Value::as_str), object.get("quantity").and_then(whole_number), object.get("amount").and_then(Value::as_f64));
        if let (Some(product_id), Some(quantity), Some(amount)) = typed {
            if let Ok(line) = line(product_id.to_owned(), quantity, amount) {
                valid.push((index, line));
            }
        }
    }
    for (position, first) in duplicates(valid.iter().map(|(_, l)| l.product_id.as_str())) {
        let (index, earlier) = (valid[position].0, valid[first].0);
        errors.push(FieldError::new(&format!("lines[{index}].product_id"), format!("{DUPLICATE_RULE} (lines[{earlier}])")));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Lines::from_vec(valid.into_iter().map(|(_, line)| line).collect()))
}

/// Each repeated product as (its position, the position of its first occurrence).
fn duplicates<'a>(products: impl Iterator<Item = &'a str>) -> Vec<(usize, usize)> {
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut repeated = Vec::new();
    for (position, product) in products.enumerate() {
        match first.get(product) {
            Some(&earlier) => repeated.push((position, earlier)),
            None => {
                first.insert(product, position);
            }
        }
    }
    repeated
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line_json(product: &str, quantity: i64) -> Value {
        json!({"product_id": product, "quantity": quantity, "amount": 1.5})
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_cart_keeps_its_lines_in_order_and_one_line_is_a_single_line_order() {
        let cart = from_json(&json!([line_json("B", 1), line_json("A", 2), line_json("C", 3)])).unwrap();
        let products: Vec<&str> = cart.as_slice().iter().map(|l| l.product_id.as_str()).collect();
        assert_eq!(products, ["B", "A", "C"]);
        assert!(cart.is_cart());
        let one = from_json(&json!([line_json("A", 2)])).unwrap();
        assert_eq!(one, Lines::One(Line { product_id: "A".into(), quantity: 2, amount_cents: 150 }));
    }

    #[test]
    fn line_count_limits() {
        assert_eq!(fields(from_json(&json!([])).unwrap_err()), ["lines"]);
        let fifty: Vec<Value> = (0..50).map(|i| line_json(&format!("P{i}"), 1)).collect();
        assert_eq!(from_json(&json!(fifty)).unwrap().as_slice().len(), 50);
        let fifty_one: Vec<Value> = (0..51).map(|i| line_json(&format!("P{i}"), 1)).collect();
        let errors = from_json(&json!(fifty_one)).unwrap_err();
        assert_eq!(fields(errors.clone()), ["lines"]);
        assert!(errors[0].message.contains("51"), "{errors:?}");
        assert_eq!(fields(from_json(&json!({"a": 1})).unwrap_err()), ["lines"]);
    }

    #[test]
    fn every_bad_line_field_is_named_with_its_index() {
        let errors = from_json(&json!([
            line_json("A", 1),
            {"product_id": "B", "quantity": 0, "amount": 1.001},
            "not a line",
            {"product_id": "", "amount": 1, "colour": "red"},
        ]))
        .unwrap_err();
        let mut names = fields(errors);
        names.sort();
        assert_eq!(names, ["lines[1].amount", "lines[1].quantity", "lines[2]", "lines[3].colour", "lines[3].product_id", "lines[3].quantity"]);
    }

    #[test]
    fn a_product_may_appear_once_per_order() {
        let errors = from_json(&json!([line_json("A", 1), line_json("B", 1), line_json("A", 2), line_json("B", 1)])).unwrap_err();
        let found: Vec<(String, String)> = errors.into_iter().map(|e| (e.field, e.message)).collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, "lines[2].product_id");
        assert!(found[0].1.contains("lines[0]"), "{found:?}");
        assert_eq!(found[1].0, "lines[3].product_id");
        assert!(found[1].1.contains("lines[1]"), "{found:?}");
    }

    #[test]
    fn typed_lines_follow_the_same_rules() {
        let placed = |p: &str, q: i64, a: f64| PlacedLine { product_id: p.into(), quantity: q, amount: a };
        assert!(from_typed(vec![placed("A", 1, 1.0), placed("B", 10_000, 0.0)]).unwrap().is_cart());
        assert_eq!(from_typed(vec![]).unwrap_err().0, "lines");
        assert_eq!(from_typed(vec![placed("A", 1, 1.0), placed("B", 0, 1.0)]).unwrap_err().0, "lines[1].quantity");
        assert_eq!(from_typed(vec![placed("A", 1, 1.0), placed("B", 1, 1.001)]).unwrap_err().0, "lines[1].amount");
        assert_eq!(from_typed(vec![placed("A", 1, 1.0), placed("A", 1, 1.0)]).unwrap_err(), ("lines[1].product_id".to_owned(), DUPLICATE_RULE));
        assert_eq!(from_typed((0..51).map(|i| placed(&format!("P{i}"), 1, 1.0)).collect()).unwrap_err().0, "lines");
    }
}
