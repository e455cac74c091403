//! The workloads: deterministic orders (fixed count and seed) and the stock they run against.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// 10 hot products, 100k distinct customers, stock for about 80% of the orders.
    FlashSale,
    /// Every order for one product, with ample stock.
    OneHotRow,
    /// 100,000 products, uniform, little contention.
    Catalog,
    /// Flash-sale orders with a 10 s hold; then every reserved order is confirmed (50%),
    /// cancelled (25%) or left to expire (25%) through the API (see checkout.rs).
    Checkout,
    /// Carts of 1 to 5 lines (3 on average), each line a hot product (20 of them, stock for
    /// about 80% of their demand) with probability 0.3, else a cold one (2,000, ample stock).
    Carts,
}

/// One order as the load generator sends it: one line, or a cart of several.
#[derive(Debug, Clone)]
pub struct Order {
    pub customer_id: String,
    pub lines: Vec<OrderLine>,
}

#[derive(Debug, Clone)]
pub struct OrderLine {
    pub product_id: String,
    pub quantity: i64,
    pub amount: f64,
}

impl Order {
    /// A single-line order in today's shape (the flash-sale body is byte for byte what it
    /// was), a cart with `lines`.
    pub fn to_json(&self) -> Value {
        match self.lines.as_slice() {
            [line] => json!({"customer_id": self.customer_id, "product_id": line.product_id, "quantity": line.quantity, "amount": line.amount}),
            lines => json!({
                "customer_id": self.customer_id,
                "lines": lines.iter().map(|l| json!({"product_id": l.product_id, "quantity": l.quantity, "amount": l.amount})).collect::<Vec<_>>(),
            }),
        }
    }

    /// The one line of a single-line order (the references write single-line orders only).
    pub fn single(&self) -> &OrderLine {
        assert_eq!(self.lines.len(), 1, "a single-line order");
        &self.lines[0]
    }
}

pub const CATALOG_PRODUCTS: usize = 100_000;
const FLASH_SALE_CUSTOMERS: u64 = 100_000;
const CART_HOT_PRODUCTS: u32 = 20;
const CART_COLD_PRODUCTS: u32 = 2_000;
const CART_HOT_SHARE: f64 = 0.3;

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Self::FlashSale => "flash-sale",
            Self::OneHotRow => "one-hot-row",
            Self::Catalog => "catalog",
            Self::Checkout => "checkout",
            Self::Carts => "carts",
        }
    }

    /// Hot products of the carts workload: `<prefix>H01`..
    fn is_hot(product: &str) -> bool {
        product.rsplit('-').next().is_some_and(|id| id.starts_with('H'))
    }

    /// `count` orders from `seed`, for products whose ids start with `prefix` (the run's own,
    /// see [`product_prefix`]): `<prefix>P001`..`P010`, or `<prefix>CAT000000`...
    pub fn orders(self, count: usize, seed: u64, prefix: &str) -> Vec<Order> {
        let mut rng = StdRng::seed_from_u64(seed ^ self as u64);
        (0..count)
            .map(|i| {
                if self == Self::Carts {
                    return cart(&mut rng, prefix);
                }
                let (product_id, customer_id, quantity) = match self {
                    Self::FlashSale | Self::Checkout => (
                        format!("{prefix}P{:03}", rng.random_range(1..=10)),
                        format!("CUST{:06}", rng.random_range(0..FLASH_SALE_CUSTOMERS)),
                        rng.random_range(1..=3),
                    ),
                    Self::OneHotRow => (format!("{prefix}P001"), format!("CUST{:06}", i as u64 % FLASH_SALE_CUSTOMERS), 1),
                    Self::Catalog => (
                        format!("{prefix}{}", catalog_product(rng.random_range(0..CATALOG_PRODUCTS))),
                        format!("CUST{:06}", rng.random_range(0..FLASH_SALE_CUSTOMERS)),
                        1,
                    ),
                    Self::Carts => unreachable!("handled above"),
                };
                let amount = f64::from(rng.random_range(100..100_000_u32)) / 100.0;
                Order { customer_id, lines: vec![OrderLine { product_id, quantity, amount }] }
            })
            .collect()
    }

    /// Stock per product for `orders`: flash-sale gets 80% of the units ordered per product,
    /// so about one order in five is rejected; the others get everything they need and more.
    pub fn stock(self, orders: &[Order]) -> Vec<(String, i64)> {
        let mut demand = std::collections::BTreeMap::<&str, i64>::new();
        for line in orders.iter().flat_map(|o| &o.lines) {
            *demand.entry(&line.product_id).or_default() += line.quantity;
        }
        demand
            .into_iter()
            .map(|(product, units)| {
                let stock = match self {
                    Self::FlashSale | Self::Checkout => units * 8 / 10,
                    Self::Carts if Self::is_hot(product) => units * 8 / 10,
                    Self::OneHotRow | Self::Catalog | Self::Carts => units * 2,
                };
                (product.to_owned(), stock)
            })
            .collect()
    }
}

pub fn catalog_product(index: usize) -> String {
    format!("CAT{index:06}")
}

/// One cart: 1 to 5 distinct products (3 on average), each hot with probability 0.3.
fn cart(rng: &mut StdRng, prefix: &str) -> Order {
    let count = rng.random_range(1..=5);
    let mut lines: Vec<OrderLine> = Vec::with_capacity(count);
    while lines.len() < count {
        let product_id = if rng.random_bool(CART_HOT_SHARE) {
            format!("{prefix}H{:02}", rng.random_range(1..=CART_HOT_PRODUCTS))
        } else {
            format!("{prefix}C{:04}", rng.random_range(0..CART_COLD_PRODUCTS))
        };
        if lines.iter().any(|line| line.product_id == product_id) {
            continue;
        }
        let amount = f64::from(rng.random_range(100..100_000_u32)) / 100.0;
        lines.push(OrderLine { product_id, quantity: rng.random_range(1..=2), amount });
    }
    Order { customer_id: format!("CUST{:06}", rng.random_range(0..FLASH_SALE_CUSTOMERS)), lines }
}

/// The prefix of one step's products: `BENCH-<run id>-<step>-`. A run id is unique per
/// invocation, a step per workload run within it, so no two runs share a product and no
/// bench product is ever one a person created (`measure::create_stock` checks it).
pub fn product_prefix(run_id: &str, step: &str) -> String {
    format!("BENCH-{run_id}-{step}-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_repeat_for_a_seed_and_differ_across_seeds() {
        let a = Workload::FlashSale.orders(100, 7, "");
        let b = Workload::FlashSale.orders(100, 7, "");
        let c = Workload::FlashSale.orders(100, 8, "");
        let key = |o: &Vec<Order>| o.iter().map(|x| format!("{}{}{}", x.customer_id, x.single().product_id, x.single().quantity)).collect::<Vec<_>>();
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
    }

    #[test]
    fn flash_sale_stock_is_eighty_percent_of_demand() {
        let orders = Workload::FlashSale.orders(10_000, 1, &product_prefix("20261125T000000-abcd", "9"));
        let stock: i64 = Workload::FlashSale.stock(&orders).iter().map(|(_, s)| s).sum();
        let demand: i64 = orders.iter().map(|o| o.single().quantity).sum();
        assert!((stock as f64 / demand as f64 - 0.8).abs() < 0.01);
        // Valid orders, and the longest product id (catalog's) stays within the 64-character limit.
        assert!(orders.iter().all(|o| orderflow_common::order::NewOrder::from_json(&o.to_json()).is_ok()));
        let longest = format!("{}{}", product_prefix("20261125T000000-abcd", "flash-sale-open-loop"), catalog_product(99_999));
        assert!(longest.len() <= 64, "{longest}");
    }

    #[test]
    fn carts_average_three_lines_over_hot_and_cold_products() {
        let prefix = product_prefix("20261125T000000-abcd", "9");
        let orders = Workload::Carts.orders(20_000, 1, &prefix);
        let lines: usize = orders.iter().map(|o| o.lines.len()).sum();
        let average = lines as f64 / orders.len() as f64;
        assert!((average - 3.0).abs() < 0.05, "{average}");
        assert!(orders.iter().all(|o| (1..=5).contains(&o.lines.len())));
        // Valid orders for the API, carts and single-line orders alike.
        assert!(orders.iter().all(|o| orderflow_common::order::NewOrder::from_json(&o.to_json()).is_ok()));
        assert!(orders.iter().any(|o| o.to_json().get("lines").is_some()));
        assert!(orders.iter().any(|o| o.to_json().get("product_id").is_some()));
        let hot = orders.iter().flat_map(|o| &o.lines).filter(|l| Workload::is_hot(&l.product_id)).count();
        assert!((hot as f64 / lines as f64 - 0.3).abs() < 0.02, "{hot} of {lines}");
        let stock = Workload::Carts.stock(&orders);
        let hot_stock: i64 = stock.iter().filter(|(p, _)| Workload::is_hot(p)).map(|(_, s)| s).sum();
        let hot_demand: i64 = orders.iter().flat_map(|o| &o.lines).filter(|l| Workload::is_hot(&l.product_id)).map(|l| l.quantity).sum();
        assert!((hot_stock as f64 / hot_demand as f64 - 0.8).abs() < 0.01);
        assert_eq!(stock.iter().filter(|(p, _)| Workload::is_hot(p)).count(), 20);
    }
}
