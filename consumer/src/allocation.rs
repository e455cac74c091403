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

/// A line of a rejected cart that could not be served when the cart's turn came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineProblem {
    /// The order's position in the input.
    pub order: usize,
    /// The line's position in the order.
    pub line: usize,
    pub reason: RejectReason,
}

/// What `allocate` decided: one decision per order, and for rejected carts which lines
/// were short (single-line orders need none: their reason says it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub decisions: Vec<Decision>,
    pub problems: Vec<LineProblem>,
}

/// First come, first served: each order, in the order given, takes the full quantity of
/// every one of its lines if that much of each product is still available, else it is
/// rejected whole and takes nothing. No partial reservations, and an order that does not fit
/// does not block smaller ones behind it. A cart is decided at its own position, before any
/// later order, so no later single-line order can take the stock it needs.
///
/// An order's lines name distinct products (validation guarantees it), so each line can be
/// checked against the stock as it is before the order. A rejected order's reason is
/// `unknown_product` if any line's product is unknown, else `insufficient_stock`.
///
/// `available` holds the locked stock of every known product; it is decremented in place,
/// so afterwards it holds what the database must be updated to.
pub fn allocate<'a, O>(orders: impl IntoIterator<Item = O>, available: &mut HashMap<String, i64>) -> Allocation
where
    O: IntoIterator<Item = (&'a str, i32)> + Clone,
{
    let mut allocation = Allocation::default();
    for (order, lines) in orders.into_iter().enumerate() {
        let (decision, short) = allocate_one(lines, available);
        allocation.decisions.push(decision);
        allocation.problems.extend(short.into_iter().map(|(line, reason)| LineProblem { order, line, reason }));
    }
    allocation
}

/// The rule for one order (see `allocate`): every line's whole quantity if that much of each
/// product is left, taken from `available` in place, or nothing. For a rejected cart (two
/// lines or more) also the positions of its short lines, with why; empty otherwise.
pub fn allocate_one<'a, L>(lines: L, available: &mut HashMap<String, i64>) -> (Decision, Vec<(usize, RejectReason)>)
where
    L: IntoIterator<Item = (&'a str, i32)> + Clone,
{
    let mut short: Vec<(usize, RejectReason)> = Vec::new();
    let mut count = 0;
    for (line, (product_id, quantity)) in lines.clone().into_iter().enumerate() {
        count += 1;
        debug_assert!(quantity > 0, "validation guarantees a positive quantity");
        match available.get(product_id) {
            None => short.push((line, RejectReason::UnknownProduct)),
            Some(stock) if *stock < i64::from(quantity) => short.push((line, RejectReason::InsufficientStock)),
            Some(_) => {}
        }
    }
    debug_assert!(
        lines.clone().into_iter().enumerate().all(|(n, (p, _))| lines.clone().into_iter().take(n).all(|(q, _)| p != q)),
        "validation guarantees distinct products per order"
    );
    if short.is_empty() {
        for (product_id, quantity) in lines {
            *available.get_mut(product_id).expect("checked above") -= i64::from(quantity);
        }
        return (Decision::Reserved, short);
    }
    let unknown = short.iter().any(|(_, reason)| *reason == RejectReason::UnknownProduct);
    let reason = if unknown { RejectReason::UnknownProduct } else { RejectReason::InsufficientStock };
    if count == 1 {
        // A single-line order's reason says it all.
        short.clear();
    }
    (Decision::Rejected(reason), short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use RejectReason::*;

    /// Single-line orders, as `allocate` takes them.
    fn single<'a>(orders: &'a [(&'a str, i32)]) -> impl Iterator<Item = [(&'a str, i32); 1]> + 'a {
        orders.iter().map(|&line| [line])
    }

    fn stock(entries: &[(&str, i64)]) -> HashMap<String, i64> {
        entries.iter().map(|(p, q)| (p.to_string(), *q)).collect()
    }

    #[test]
    fn exact_stock_is_fully_used() {
        let mut available = stock(&[("P", 3)]);
        let decisions = allocate(single(&[("P", 1), ("P", 2), ("P", 1)]), &mut available).decisions;
        assert_eq!(decisions, [Reserved, Reserved, Rejected(InsufficientStock)]);
        assert_eq!(available["P"], 0);
    }

    #[test]
    fn quantities_above_one_are_all_or_nothing() {
        let mut available = stock(&[("P", 5)]);
        let decisions = allocate(single(&[("P", 3), ("P", 3), ("P", 2)]), &mut available).decisions;
        assert_eq!(decisions, [Reserved, Rejected(InsufficientStock), Reserved]);
        assert_eq!(available["P"], 0);
    }

    #[test]
    fn zero_stock_rejects_everything() {
        let mut available = stock(&[("P", 0)]);
        let decisions = allocate(single(&[("P", 1), ("P", 10_000)]), &mut available).decisions;
        assert_eq!(decisions, [Rejected(InsufficientStock), Rejected(InsufficientStock)]);
        assert_eq!(available["P"], 0);
    }

    #[test]
    fn unknown_product_is_rejected_without_touching_others() {
        let mut available = stock(&[("P", 2)]);
        let decisions = allocate(single(&[("NOPE", 1), ("P", 2)]), &mut available).decisions;
        assert_eq!(decisions, [Rejected(UnknownProduct), Reserved]);
        assert_eq!(available.len(), 1);
        assert_eq!(available["P"], 0);
    }

    #[test]
    fn products_are_independent() {
        let mut available = stock(&[("A", 1), ("B", 1)]);
        let decisions = allocate(single(&[("A", 1), ("B", 1), ("A", 1)]), &mut available).decisions;
        assert_eq!(decisions, [Reserved, Reserved, Rejected(InsufficientStock)]);
    }

    #[test]
    fn never_oversells_whatever_the_order_mix() {
        // A small deterministic sweep: total reserved never exceeds stock, and stock left
        // plus reserved always equals stock at the start.
        for start in 0..20_i64 {
            let mut available = stock(&[("P", start)]);
            let orders: Vec<(&str, i32)> = (0..30).map(|i| ("P", (i * 7 % 5 + 1) as i32)).collect();
            let decisions = allocate(single(&orders), &mut available).decisions;
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

    fn cart<'a>(lines: &'a [(&'a str, i32)]) -> Vec<(&'a str, i32)> {
        lines.to_vec()
    }

    #[test]
    fn a_cart_with_one_short_line_takes_nothing() {
        let mut available = stock(&[("A", 5), ("B", 1), ("C", 5)]);
        let orders = vec![cart(&[("A", 2), ("B", 2), ("C", 2)])];
        let allocation = allocate(orders, &mut available);
        assert_eq!(allocation.decisions, [Rejected(InsufficientStock)]);
        assert_eq!(allocation.problems, [LineProblem { order: 0, line: 1, reason: InsufficientStock }]);
        assert_eq!(available, stock(&[("A", 5), ("B", 1), ("C", 5)]), "no line's stock moved");
    }

    #[test]
    fn a_cart_that_fits_takes_every_line() {
        let mut available = stock(&[("A", 5), ("B", 2)]);
        let allocation = allocate(vec![cart(&[("A", 5), ("B", 2)])], &mut available);
        assert_eq!(allocation.decisions, [Reserved]);
        assert!(allocation.problems.is_empty());
        assert_eq!(available, stock(&[("A", 0), ("B", 0)]));
    }

    #[test]
    fn an_unknown_product_line_rejects_the_cart_as_unknown_product_and_names_every_bad_line() {
        let mut available = stock(&[("A", 1), ("B", 0)]);
        let allocation = allocate(vec![cart(&[("A", 1), ("B", 1), ("NOPE", 1)])], &mut available);
        assert_eq!(allocation.decisions, [Rejected(UnknownProduct)]);
        assert_eq!(
            allocation.problems,
            [LineProblem { order: 0, line: 1, reason: InsufficientStock }, LineProblem { order: 0, line: 2, reason: UnknownProduct }]
        );
        assert_eq!(available["A"], 1);
    }

    #[test]
    fn carts_and_single_lines_are_first_come_first_served() {
        // A cart at position 1 comes before the single-line orders behind it: they cannot
        // take its stock, and it cannot take stock that earlier orders took.
        let mut available = stock(&[("A", 3), ("B", 1)]);
        let orders = vec![
            cart(&[("A", 1)]),
            cart(&[("A", 2), ("B", 1)]),
            cart(&[("B", 1)]),
            cart(&[("A", 1)]),
            cart(&[("B", 1), ("A", 1)]),
        ];
        let allocation = allocate(orders, &mut available);
        assert_eq!(allocation.decisions, [Reserved, Reserved, Rejected(InsufficientStock), Rejected(InsufficientStock), Rejected(InsufficientStock)]);
        assert_eq!(
            allocation.problems,
            [LineProblem { order: 4, line: 0, reason: InsufficientStock }, LineProblem { order: 4, line: 1, reason: InsufficientStock }],
            "single-line orders get no line detail; the cart names both short lines"
        );
        assert_eq!(available, stock(&[("A", 0), ("B", 0)]));
    }

    #[test]
    fn carts_never_oversell_and_move_all_or_nothing() {
        // Deterministic sweep over stock levels and cart mixes: per product, stock left plus
        // the quantities of reserved lines equals the stock at the start, and a rejected
        // cart's lines took nothing.
        let products = ["A", "B", "C", "D"];
        for start in 0..12_i64 {
            let initial: Vec<(&str, i64)> = products.iter().map(|p| (*p, start + (p.as_bytes()[0] as i64 % 3))).collect();
            let mut available = stock(&initial);
            let orders: Vec<Vec<(&str, i32)>> = (0..40_usize)
                .map(|i| {
                    let lines = 1 + i % 3;
                    (0..lines).map(|l| (products[(i + l) % 4], ((i * 7 + l) % 3 + 1) as i32)).collect()
                })
                .collect();
            let allocation = allocate(orders.clone(), &mut available);
            let mut taken = HashMap::<&str, i64>::new();
            for (lines, decision) in orders.iter().zip(&allocation.decisions) {
                if *decision == Reserved {
                    for (product, quantity) in lines {
                        *taken.entry(product).or_default() += i64::from(*quantity);
                    }
                }
            }
            for (product, initial) in &initial {
                assert!(available[*product] >= 0);
                assert_eq!(available[*product] + taken.get(product).copied().unwrap_or(0), *initial, "{product} at {start}");
            }
            for problem in &allocation.problems {
                assert_ne!(allocation.decisions[problem.order], Reserved);
                assert!(orders[problem.order].len() > 1);
            }
        }
    }
}
