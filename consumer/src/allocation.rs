//! Deciding which orders of a batch get stock: pure, in memory, in offset order.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Reserved,
    Rejected(RejectReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    InsufficientStock,
    UnknownProduct,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientStock => "insufficient_stock",
            Self::UnknownProduct => "unknown_product",
        }
    }
}

impl Decision {
    pub fn status(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Rejected(_) => "rejected",
        }
    }

    pub fn reason(self) -> Option<&'static str> {
        match self {
            Self::Reserved => None,
            Self::Rejected(reason) => Some(reason.as_str()),
        }
    }
}

/// First come, first served: each order, in the order given, takes its full quantity if
/// that much is still available, else it is rejected. No partial reservations, and a large
/// order that does not fit does not block smaller ones behind it.
///
/// `available` holds the locked stock of every known product; it is decremented in place,
/// so afterwards it holds what the database must be updated to.
pub fn allocate<'a>(
    orders: impl IntoIterator<Item = (&'a str, i32)>,
    available: &mut HashMap<String, i64>,
) -> Vec<Decision> {
    orders.into_iter().map(|(product_id, quantity)| allocate_one(product_id, quantity, available)).collect()
}

/// The rule for one order (see `allocate`): its whole quantity if that much is left, taken
/// from `available` in place.
pub fn allocate_one(product_id: &str, quantity: i32, available: &mut HashMap<String, i64>) -> Decision {
    let Some(stock) = available.get_mut(product_id) else {
        return Decision::Rejected(RejectReason::UnknownProduct);
    };
    let quantity = i64::from(quantity);
    debug_assert!(quantity > 0, "validation guarantees a positive quantity");
    if *stock < quantity {
        return Decision::Rejected(RejectReason::InsufficientStock);
    }
    *stock -= quantity;
    Decision::Reserved
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use RejectReason::*;

    fn stock(entries: &[(&str, i64)]) -> HashMap<String, i64> {
        entries.iter().map(|(p, q)| (p.to_string(), *q)).collect()
    }

    #[test]
    fn exact_stock_is_fully_used() {
        let mut available = stock(&[("P", 3)]);
        let decisions = allocate([("P", 1), ("P", 2), ("P", 1)], &mut available);
        assert_eq!(decisions, [Reserved, Reserved, Rejected(InsufficientStock)]);
        assert_eq!(available["P"], 0);
    }

    #[test]
    fn quantities_above_one_are_all_or_nothing() {
        let mut available = stock(&[("P", 5)]);
        let decisions = allocate([("P", 3), ("P", 3), ("P", 2)], &mut available);
        assert_eq!(decisions, [Reserved, Rejected(InsufficientStock), Reserved]);
        assert_eq!(available["P"], 0);
    }

    #[test]
    fn zero_stock_rejects_everything() {
        let mut available = stock(&[("P", 0)]);
        let decisions = allocate([("P", 1), ("P", 10_000)], &mut available);
        assert_eq!(decisions, [Rejected(InsufficientStock), Rejected(InsufficientStock)]);
        assert_eq!(available["P"], 0);
    }

    #[test]
    fn unknown_product_is_rejected_without_touching_others() {
        let mut available = stock(&[("P", 2)]);
        let decisions = allocate([("NOPE", 1), ("P", 2)], &mut available);
        assert_eq!(decisions, [Rejected(UnknownProduct), Reserved]);
        assert_eq!(available.len(), 1);
        assert_eq!(available["P"], 0);
    }

    #[test]
    fn products_are_independent() {
        let mut available = stock(&[("A", 1), ("B", 1)]);
        let decisions = allocate([("A", 1), ("B", 1), ("A", 1)], &mut available);
        assert_eq!(decisions, [Reserved, Reserved, Rejected(InsufficientStock)]);
    }

    #[test]
    fn never_oversells_whatever_the_order_mix() {
        // A small deterministic sweep: total reserved never exceeds stock, and stock left
        // plus reserved always equals stock at the start.
        for start in 0..20_i64 {
            let mut available = stock(&[("P", start)]);
            let orders: Vec<(&str, i32)> = (0..30).map(|i| ("P", (i * 7 % 5 + 1) as i32)).collect();
            let decisions = allocate(orders.iter().copied(), &mut available);
            let reserved: i64 = orders
                .iter()
                .zip(&decisions)
                .filter(|(_, d)| **d == Reserved)
                .map(|((_, q), _)| i64::from(*q))
                .sum();
            assert!(reserved <= start);
            assert_eq!(available["P"] + reserved, start);
            assert!(available["P"] >= 0);
        }
    }
}
