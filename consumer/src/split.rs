//! Splitting a batch among the workers: pure, in memory. Each part is one transaction, so
//! every product, and every cart with all its products, must be in exactly one part: the
//! workers of one consumer then never wait for each other's row locks, and a cart is
//! reserved all or nothing in one transaction.
//!
//! The products of the batch are the nodes of a graph, and each cart links its products.
//! Its connected components (union-find) are what may not be cut. They go, busiest first,
//! to the part with the fewest order lines so far: a flash sale has a handful of hot
//! products, and a hash would often leave one worker with twice the work of another while
//! the batch waits for the slowest. Without carts every component is one product, and this
//! is the per-product split the consumer always did.
//!
//! That balance is per batch, so it differs between consumers: with several consumers in a
//! group, every consumer's batch holds the same hot products (orders are keyed by customer),
//! and a balanced part of one consumer shares rows with every part of every other. While a
//! consumer meets lock conflicts it places components in fixed lanes instead
//! (`Layout::Lanes`): a product's lane is a hash of its id, the same in every consumer, and a
//! part is a set of whole lanes. Two consumers' parts then meet only where they hold the
//! same lane, and transactions on different lanes run side by side.

use std::collections::HashMap;

/// How components are placed into parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Busiest component first, to the part with the least work so far: the most even split
    /// of this batch. For a consumer alone on its rows.
    Balanced { parts: usize },
    /// Component to lane `hash(smallest product id) % lanes`, lane to part `lane % parts`:
    /// the same in every consumer of the group that has the same `lanes`, whatever its
    /// `parts`, so a part of any consumer is a union of whole lanes.
    Lanes { lanes: usize, parts: usize },
}

impl Layout {
    pub fn parts(self) -> usize {
        match self {
            Self::Balanced { parts } | Self::Lanes { parts, .. } => parts.max(1),
        }
    }
}

/// A product's lane: FNV-1a over its id, so every process and version agrees (std's hasher
/// is seeded per process and not stable across releases).
pub fn lane(product: &str, lanes: usize) -> usize {
    let hash = product.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    (hash % lanes.max(1) as u64) as usize
}

/// Splits `orders` into at most `layout.parts()` groups, keeping their order inside each
/// group. `products(order)` gives the products an order (a placement, or a command acting on
/// one) touches; an order with several links them.
pub fn split<'a, T, P, I>(orders: &[T], layout: Layout, products: P) -> Vec<Vec<T>>
where
    T: Copy,
    P: Fn(T) -> I,
    I: Iterator<Item = &'a str>,
{
    let parts = layout.parts();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut names: Vec<&str> = Vec::new();
    let mut weight: Vec<usize> = Vec::new();
    let mut components = UnionFind::default();
    for order in orders {
        let mut first = None;
        for product in products(*order) {
            let node = *index.entry(product).or_insert_with(|| {
                names.push(product);
                weight.push(0);
                components.add()
            });
            weight[node] += 1;
            match first {
                None => first = Some(node),
                Some(first) => components.union(first, node),
            }
        }
    }

    // Each component's weight (its order lines) and its smallest product id, for a stable
    // tie-break: the same batch always splits the same way. Indexed by node, not hashed: this
    // runs for every batch, on the flash-sale path too.
    let mut per_root: Vec<Option<(usize, &str)>> = vec![None; names.len()];
    for node in 0..names.len() {
        let entry = per_root[components.find(node)].get_or_insert((0, names[node]));
        entry.0 += weight[node];
        entry.1 = entry.1.min(names[node]);
    }
    let mut busiest_first: Vec<(usize, usize, &str)> =
        per_root.iter().enumerate().filter_map(|(root, found)| found.map(|(w, name)| (root, w, name))).collect();
    busiest_first.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(b.2)));
    let mut load = vec![0_usize; parts];
    let mut part_of_root = vec![0_usize; names.len()];
    for (root, w, smallest) in busiest_first {
        let part = match layout {
            Layout::Balanced { .. } => (0..parts).min_by_key(|&part| load[part]).unwrap_or(0),
            Layout::Lanes { lanes, .. } => lane(smallest, lanes) % parts,
        };
        load[part] += w;
        part_of_root[root] = part;
    }

    let mut groups: Vec<Vec<T>> = (0..parts).map(|_| Vec::new()).collect();
    for order in orders {
        // An order with no lines cannot exist (validation); it would go to part 0.
        let part = products(*order).next().map_or(0, |product| part_of_root[components.find(index[product])]);
        groups[part].push(*order);
    }
    groups.retain(|group| !group.is_empty());
    groups
}

/// After a lock conflict with another consumer: which of a part's `orders` can go ahead with
/// the product rows this transaction did lock (`busy(product)` is false), keeping their
/// order, and which must wait for the next attempt. What waits is whole components (a
/// product with every cart and command linked to it), so each product's orders still apply
/// in offset order and a cart still moves all or nothing: going ahead with a component is the
/// same as having split it into a part of its own.
pub fn go_ahead<'a, T, P, I, B>(orders: &[T], products: P, busy: B) -> (Vec<T>, Vec<T>)
where
    T: Copy,
    P: Fn(T) -> I,
    I: Iterator<Item = &'a str>,
    B: Fn(&str) -> bool,
{
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut blocked: Vec<bool> = Vec::new();
    let mut components = UnionFind::default();
    for order in orders {
        let mut first = None;
        for product in products(*order) {
            let node = *index.entry(product).or_insert_with(|| {
                blocked.push(busy(product));
                components.add()
            });
            match first {
                None => first = Some(node),
                Some(first) => components.union(first, node),
            }
        }
    }
    let mut root_blocked = vec![false; blocked.len()];
    for (node, is_blocked) in blocked.iter().enumerate() {
        if *is_blocked {
            root_blocked[components.find(node)] = true;
        }
    }
    let (mut now, mut later) = (Vec::new(), Vec::new());
    for order in orders {
        let waits = products(*order).next().is_some_and(|product| root_blocked[components.find(index[product])]);
        if waits { later.push(*order) } else { now.push(*order) }
    }
    (now, later)
}

/// Disjoint sets over 0..n with path halving and union by size.
#[derive(Debug, Default)]
struct UnionFind {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl UnionFind {
    fn add(&mut self) -> usize {
        self.parent.push(self.parent.len());
        self.size.push(1);
        self.parent.len() - 1
    }

    fn find(&mut self, mut node: usize) -> usize {
        while self.parent[node] != node {
            self.parent[node] = self.parent[self.parent[node]];
            node = self.parent[node];
        }
        node
    }

    fn union(&mut self, a: usize, b: usize) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a;
        self.size[a] += self.size[b];
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use orderflow_common::order::Line;

    use super::*;

    /// An order as a list of products, numbered in arrival order.
    struct Order {
        seq: usize,
        lines: Vec<Line>,
    }

    fn order(seq: usize, products: &[&str]) -> Order {
        let lines = products.iter().map(|p| Line { product_id: (*p).to_owned(), quantity: 1, amount_cents: 1 }).collect();
        Order { seq, lines }
    }

    fn run(orders: &[Order], parts: usize) -> Vec<Vec<&Order>> {
        let refs: Vec<&Order> = orders.iter().collect();
        split(&refs, Layout::Balanced { parts }, |o: &Order| o.lines.iter().map(|line| line.product_id.as_str()))
    }

    #[test]
    fn after_a_conflict_whole_components_wait_and_the_rest_goes_ahead_in_order() {
        // 0-3: a cart links B and C; D is alone; E is busy and alone; A is alone.
        let orders = [order(0, &["A"]), order(1, &["B", "C"]), order(2, &["C"]), order(3, &["D"]), order(4, &["E"]), order(5, &["B"])];
        let refs: Vec<&Order> = orders.iter().collect();
        let seqs = |list: &[&Order]| list.iter().map(|o| o.seq).collect::<Vec<_>>();
        // C is busy: the cart and everything on B waits with it, though B itself was locked.
        let (now, later) = go_ahead(&refs, |o: &Order| o.lines.iter().map(|line| line.product_id.as_str()), |p| p == "C" || p == "E");
        assert_eq!(seqs(&now), [0, 3]);
        assert_eq!(seqs(&later), [1, 2, 4, 5]);
        let (now, later) = go_ahead(&refs, |o: &Order| o.lines.iter().map(|line| line.product_id.as_str()), |_| false);
        assert_eq!((seqs(&now).len(), later.len()), (6, 0));
    }

    /// Every order once; order kept in each part; no product in two parts.
    fn check(orders: &[Order], parts: &[Vec<&Order>], max_parts: usize) {
        assert!(parts.len() <= max_parts);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), orders.len());
        let mut owner: HashMap<&str, usize> = HashMap::new();
        for (index, part) in parts.iter().enumerate() {
            assert!(part.windows(2).all(|w| w[0].seq < w[1].seq), "offset order kept");
            for order in part {
                for line in &order.lines {
                    assert_eq!(*owner.entry(&line.product_id).or_insert(index), index, "{} in two parts", line.product_id);
                }
            }
        }
    }

    #[test]
    fn a_product_never_spans_two_parts_and_order_is_kept() {
        let orders: Vec<Order> = (0..200).map(|i| order(i, &[&format!("P{}", i % 13)])).collect();
        check(&orders, &run(&orders, 4), 4);
    }

    #[test]
    fn hot_products_are_spread_evenly_over_the_parts() {
        // Ten equally hot products over four parts: no part may get more than three.
        let orders: Vec<Order> = (0..1000).map(|i| order(i, &[&format!("PROD{:03}", i % 10)])).collect();
        let sizes: Vec<usize> = run(&orders, 4).iter().map(Vec::len).collect();
        assert_eq!(sizes.len(), 4);
        assert!(sizes.iter().all(|&n| (200..=300).contains(&n)), "{sizes:?}");
        // One product that dominates gets a part to itself.
        let mut skewed: Vec<Order> = (0..900).map(|i| order(i, &["HOT"])).collect();
        skewed.extend((0..100).map(|i| order(900 + i, &[&format!("COLD{i}")])));
        let parts = run(&skewed, 4);
        assert!(parts.iter().any(|part| part.len() == 900 && part.iter().all(|o| o.lines[0].product_id == "HOT")));
    }

    #[test]
    fn in_lanes_two_products_share_a_part_exactly_when_their_lanes_do_whatever_the_batch() {
        // Two consumers' batches over the same hot products, with different weights and one
        // product missing from the second: the grouping depends only on the product ids.
        let first: Vec<Order> = (0..1000).map(|i| order(i, &[&format!("PROD{:03}", i % 10)])).collect();
        let second: Vec<Order> = (0..1000).map(|i| order(i, &[&format!("PROD{:03}", (i * i + 3) % 9)])).collect();
        for parts in 1..=4 {
            for batch in [&first, &second] {
                let refs: Vec<&Order> = batch.iter().collect();
                let split = split(&refs, Layout::Lanes { lanes: 4, parts }, |o: &Order| o.lines.iter().map(|line| line.product_id.as_str()));
                check(batch, &split, parts);
                for part in &split {
                    let groups: Vec<usize> = part.iter().map(|o| lane(&o.lines[0].product_id, 4) % parts).collect();
                    assert!(groups.windows(2).all(|w| w[0] == w[1]), "one part holds products of one lane group: {groups:?}");
                }
            }
        }
        // The hash spreads these ids: not every product in one lane.
        let used: std::collections::HashSet<usize> = (0..10).map(|i| lane(&format!("PROD{i:03}"), 4)).collect();
        assert!(used.len() > 1, "{used:?}");
    }

    #[test]
    fn a_cart_pulls_its_products_and_their_other_orders_into_one_part() {
        // A and C are linked by one cart, C and E by another: A, C, E and every order for them
        // form one component. B and D stay free.
        let orders = vec![
            order(0, &["A"]),
            order(1, &["B"]),
            order(2, &["C", "A"]),
            order(3, &["D"]),
            order(4, &["E"]),
            order(5, &["E", "C"]),
            order(6, &["A"]),
            order(7, &["B"]),
        ];
        let parts = run(&orders, 4);
        check(&orders, &parts, 4);
        let linked = parts.iter().find(|part| part.iter().any(|o| o.seq == 2)).unwrap();
        let seqs: Vec<usize> = linked.iter().map(|o| o.seq).collect();
        assert_eq!(seqs, [0, 2, 4, 5, 6], "the component, in arrival order");
        assert_eq!(parts.len(), 3, "the component, B, and D each in a part");
    }

    #[test]
    fn components_never_span_parts_in_a_random_mix() {
        // A deterministic pseudo-random mix of carts (1 to 5 lines) and single-line orders
        // over a catalogue with a few hot products.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n) as usize
        };
        for parts in 1..=6 {
            let orders: Vec<Order> = (0..500)
                .map(|seq| {
                    let count = 1 + next(5);
                    let mut products: Vec<String> = Vec::new();
                    while products.len() < count {
                        let product = if next(2) == 0 { format!("HOT{}", next(4)) } else { format!("COLD{}", next(400)) };
                        if !products.contains(&product) {
                            products.push(product);
                        }
                    }
                    let names: Vec<&str> = products.iter().map(String::as_str).collect();
                    order(seq, &names)
                })
                .collect();
            let split = run(&orders, parts);
            check(&orders, &split, parts);
            // Within a part, each cart's products are also in no other part: checked above per
            // product; and the same input splits the same way every time.
            let again: Vec<Vec<usize>> = run(&orders, parts).iter().map(|p| p.iter().map(|o| o.seq).collect()).collect();
            let first: Vec<Vec<usize>> = split.iter().map(|p| p.iter().map(|o| o.seq).collect()).collect();
            assert_eq!(first, again);
        }
    }

    #[test]
    fn union_find_joins_transitively() {
        let mut sets = UnionFind::default();
        let nodes: Vec<usize> = (0..6).map(|_| sets.add()).collect();
        sets.union(nodes[0], nodes[1]);
        sets.union(nodes[2], nodes[3]);
        sets.union(nodes[1], nodes[3]);
        assert_eq!(sets.find(0), sets.find(2));
        assert_ne!(sets.find(0), sets.find(4));
        assert_ne!(sets.find(4), sets.find(5));
    }
}
