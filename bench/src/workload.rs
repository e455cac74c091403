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
}

/// One order as the load generator sends it.
#[derive(Debug, Clone)]
pub struct Order {
    pub customer_id: String,
    pub product_id: String,
    pub quantity: i64,
    pub amount: f64,
}

impl Order {
    pub fn to_json(&self) -> Value {
        json!({"customer_id": self.customer_id, "product_id": self.product_id, "quantity": self.quantity, "amount": self.amount})
    }
}

pub const CATALOG_PRODUCTS: usize = 100_000;
const FLASH_SALE_CUSTOMERS: u64 = 100_000;

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Self::FlashSale => "flash-sale",
            Self::OneHotRow => "one-hot-row",
            Self::Catalog => "catalog",
            Self::Checkout => "checkout",
        }
    }

    /// `count` orders from `seed`, for products whose ids start with `prefix` (the run's own,
    /// see [`product_prefix`]): `<prefix>P001`..`P010`, or `<prefix>CAT000000`...
    pub fn orders(self, count: usize, seed: u64, prefix: &str) -> Vec<Order> {
        let mut rng = StdRng::seed_from_u64(seed ^ self as u64);
        (0..count)
            .map(|i| {
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
                };
                let amount = f64::from(rng.random_range(100..100_000_u32)) / 100.0;
                Order { customer_id, product_id, quantity, amount }
            })
            .collect()
    }

    /// Stock per product for `orders`: flash-sale gets 80% of the units ordered per product,
    /// so about one order in five is rejected; the others get everything they need and more.
    pub fn stock(self, orders: &[Order]) -> Vec<(String, i64)> {
        let mut demand = std::collections::BTreeMap::<&str, i64>::new();
        for order in orders {
            *demand.entry(&order.product_id).or_default() += order.quantity;
        }
        demand
            .into_iter()
            .map(|(product, units)| {
                let stock = match self {
                    Self::FlashSale | Self::Checkout => units * 8 / 10,
                    Self::OneHotRow | Self::Catalog => units * 2,
                };
                (product.to_owned(), stock)
            })
            .collect()
    }
}

pub fn catalog_product(index: usize) -> String {
    format!("CAT{index:06}")
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
        let key = |o: &Vec<Order>| o.iter().map(|x| format!("{}{}{}", x.customer_id, x.product_id, x.quantity)).collect::<Vec<_>>();
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
    }

    #[test]
    fn flash_sale_stock_is_eighty_percent_of_demand() {
        let orders = Workload::FlashSale.orders(10_000, 1, &product_prefix("20261125T000000-abcd", "9"));
        let stock: i64 = Workload::FlashSale.stock(&orders).iter().map(|(_, s)| s).sum();
        let demand: i64 = orders.iter().map(|o| o.quantity).sum();
        assert!((stock as f64 / demand as f64 - 0.8).abs() < 0.01);
        // Valid orders, and the longest product id (catalog's) stays within the 64-character limit.
        assert!(orders.iter().all(|o| orderflow_common::order::NewOrder::from_json(&o.to_json()).is_ok()));
        let longest = format!("{}{}", product_prefix("20261125T000000-abcd", "flash-sale-open-loop"), catalog_product(99_999));
        assert!(longest.len() <= 64, "{longest}");
    }
}
