//! One reservation transaction for a set of orders: lock each product row once, skip orders
//! already applied, allocate in memory, and write orders and stock set-based, in four
//! statements whatever the number of orders.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;
use tokio_postgres::IsolationLevel;
use uuid::Uuid;

use orderflow_common::order::ValidOrder;

use crate::allocation::{allocate, Decision, RejectReason};

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// Another transaction holds one of the product rows (SQLSTATE 55P03). Retry later.
    #[error("a product row is locked by another transaction")]
    LockConflict,
    /// An order we saw as new was inserted by someone else before our insert. Nothing was
    /// committed; a retry will see it as already applied.
    #[error("{0} orders were applied concurrently by another transaction")]
    ConcurrentlyApplied(usize),
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error")]
    Database(#[source] tokio_postgres::Error),
}

/// How a failed attempt is retried. The batch is never dropped: only how fast and how
/// loudly it is retried differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Another transaction got there first: retry soon.
    Conflict,
    /// The database is unreachable, overloaded, restarting or cancelled us: retry with
    /// backoff; it passes by itself.
    Transient,
    /// The same statement will fail the same way until someone changes the schema or the
    /// data (a CHECK violation, an undefined column): loud, and retried slowly.
    Permanent,
}

impl ReserveError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::LockConflict | Self::ConcurrentlyApplied(_) => ErrorClass::Conflict,
            Self::Pool(_) | Self::Database(_) => match self.sqlstate() {
                Some(code) => classify(code),
                // No SQLSTATE: I/O, a closed connection, a pool or connect timeout. (Rows are
                // read with `Row::get`, so a decoding mismatch panics instead of landing here.)
                None => ErrorClass::Transient,
            },
        }
    }

    pub fn sqlstate(&self) -> Option<&SqlState> {
        orderflow_common::errors::sqlstate(self)
    }
}

/// Transient SQLSTATE classes: 08 connection exception, 40 transaction rollback
/// (serialization failure, deadlock), 53 insufficient resources, 57 operator intervention
/// (admin shutdown, cannot connect now, query cancelled); 55P03 is a lock conflict. Anything
/// else is taken as permanent: retrying it quickly would only repeat it.
pub fn classify(code: &SqlState) -> ErrorClass {
    if *code == SqlState::LOCK_NOT_AVAILABLE {
        return ErrorClass::Conflict;
    }
    match code.code().get(..2) {
        Some("08" | "40" | "53" | "57") => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

impl From<tokio_postgres::Error> for ReserveError {
    fn from(error: tokio_postgres::Error) -> Self {
        if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            return Self::LockConflict;
        }
        Self::Database(error)
    }
}

/// What one committed transaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub reserved: u64,
    pub insufficient_stock: u64,
    pub unknown_product: u64,
    /// Orders that were already in the database (redeliveries): left untouched.
    pub already_applied: u64,
    /// Attempts that hit a locked row and were retried.
    pub lock_conflicts: u64,
}

impl Applied {
    pub fn rejected(&self) -> u64 {
        self.insufficient_stock + self.unknown_product
    }
}

impl std::ops::AddAssign for Applied {
    fn add_assign(&mut self, other: Self) {
        self.reserved += other.reserved;
        self.insufficient_stock += other.insufficient_stock;
        self.unknown_product += other.unknown_product;
        self.already_applied += other.already_applied;
        self.lock_conflicts += other.lock_conflicts;
    }
}

// Sorting before locking gives every transaction the same lock order. With NOWAIT that
// prevents livelock between two batches that each hold half of the other's rows.
const LOCK_PRODUCTS: &str = "SELECT product_id, available_quantity FROM inventory \
     WHERE product_id = ANY($1) ORDER BY product_id FOR UPDATE NOWAIT";

const FIND_APPLIED: &str = "SELECT order_id FROM orders WHERE order_id = ANY($1)";

const INSERT_ORDERS: &str = "INSERT INTO orders \
     (order_id, customer_id, product_id, quantity, amount, status, reason, created_at, processed_at) \
     SELECT o.order_id, o.customer_id, o.product_id, o.quantity, (o.amount_cents::numeric / 100)::numeric(12, 2), \
            o.status, o.reason, o.created_at, statement_timestamp() \
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::int8[], $6::text[], $7::text[], $8::timestamptz[]) \
          AS o(order_id, customer_id, product_id, quantity, amount_cents, status, reason, created_at) \
     ON CONFLICT (order_id) DO NOTHING";

const TAKE_STOCK: &str = "UPDATE inventory AS i \
     SET available_quantity = i.available_quantity - d.quantity, \
         reserved_quantity = i.reserved_quantity + d.quantity, \
         updated_at = statement_timestamp() \
     FROM unnest($1::text[], $2::int8[]) AS d(product_id, quantity) \
     WHERE i.product_id = d.product_id";

/// Applies `orders` (in offset order, order_ids unique) in one READ COMMITTED transaction.
pub async fn reserve(pool: &Pool, orders: &[&ValidOrder]) -> Result<Applied, ReserveError> {
    debug_assert!(
        orders.iter().map(|o| o.order_id).collect::<HashSet<_>>().len() == orders.len(),
        "callers remove duplicate order_ids first"
    );
    let mut client = pool.get().await?;
    let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;

    let mut products: Vec<&str> = orders.iter().map(|o| o.product_id.as_str()).collect();
    products.sort_unstable();
    products.dedup();
    let lock = transaction.prepare_cached(LOCK_PRODUCTS).await?;
    let mut available: HashMap<String, i64> =
        transaction.query(&lock, &[&products]).await?.iter().map(|row| (row.get(0), row.get(1))).collect();
    let stock_before = available.clone();

    // Only after the locks: a concurrent transaction applying the same order must hold the
    // same product lock, so what this query sees is final for every known product.
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    let find = transaction.prepare_cached(FIND_APPLIED).await?;
    let applied: HashSet<Uuid> = transaction.query(&find, &[&ids]).await?.iter().map(|row| row.get(0)).collect();
    let new: Vec<&ValidOrder> = orders.iter().copied().filter(|o| !applied.contains(&o.order_id)).collect();

    let decisions = allocate(new.iter().map(|o| (o.product_id.as_str(), o.quantity)), &mut available);
    let inserted = insert_orders(&transaction, &new, &decisions).await?;
    if inserted != new.len() as u64 {
        return Err(ReserveError::ConcurrentlyApplied(new.len() - inserted as usize));
    }
    take_stock(&transaction, &stock_before, &available).await?;
    transaction.commit().await?;

    let count = |wanted: Decision| decisions.iter().filter(|d| **d == wanted).count() as u64;
    Ok(Applied {
        reserved: count(Decision::Reserved),
        insufficient_stock: count(Decision::Rejected(RejectReason::InsufficientStock)),
        unknown_product: count(Decision::Rejected(RejectReason::UnknownProduct)),
        already_applied: applied.len() as u64,
        lock_conflicts: 0,
    })
}

async fn insert_orders(
    transaction: &deadpool_postgres::Transaction<'_>,
    orders: &[&ValidOrder],
    decisions: &[Decision],
) -> Result<u64, ReserveError> {
    if orders.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    let customers: Vec<&str> = orders.iter().map(|o| o.customer_id.as_str()).collect();
    let products: Vec<&str> = orders.iter().map(|o| o.product_id.as_str()).collect();
    let quantities: Vec<i32> = orders.iter().map(|o| o.quantity).collect();
    let amounts: Vec<i64> = orders.iter().map(|o| o.amount_cents).collect();
    let statuses: Vec<&str> = decisions.iter().map(|d| d.status()).collect();
    let reasons: Vec<Option<&str>> = decisions.iter().map(|d| d.reason()).collect();
    let created: Vec<chrono::DateTime<chrono::Utc>> = orders.iter().map(|o| o.placed_at).collect();
    let insert = transaction.prepare_cached(INSERT_ORDERS).await?;
    Ok(transaction
        .execute(&insert, &[&ids, &customers, &products, &quantities, &amounts, &statuses, &reasons, &created])
        .await?)
}

async fn take_stock(
    transaction: &deadpool_postgres::Transaction<'_>,
    before: &HashMap<String, i64>,
    after: &HashMap<String, i64>,
) -> Result<(), ReserveError> {
    let (products, taken): (Vec<&str>, Vec<i64>) = after
        .iter()
        .map(|(product, left)| (product.as_str(), before[product] - left))
        .filter(|(_, taken)| *taken > 0)
        .unzip();
    if products.is_empty() {
        return Ok(());
    }
    let update = transaction.prepare_cached(TAKE_STOCK).await?;
    let updated = transaction.execute(&update, &[&products, &taken]).await?;
    debug_assert_eq!(updated, products.len() as u64, "every locked row is updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_classes_are_retried_quickly() {
        for (code, class) in [
            (SqlState::ADMIN_SHUTDOWN, ErrorClass::Transient),
            (SqlState::CONNECTION_FAILURE, ErrorClass::Transient),
            (SqlState::T_R_SERIALIZATION_FAILURE, ErrorClass::Transient),
            (SqlState::T_R_DEADLOCK_DETECTED, ErrorClass::Transient),
            (SqlState::TOO_MANY_CONNECTIONS, ErrorClass::Transient),
            (SqlState::LOCK_NOT_AVAILABLE, ErrorClass::Conflict),
            (SqlState::CHECK_VIOLATION, ErrorClass::Permanent),
            (SqlState::UNDEFINED_COLUMN, ErrorClass::Permanent),
            (SqlState::UNDEFINED_TABLE, ErrorClass::Permanent),
            (SqlState::NUMERIC_VALUE_OUT_OF_RANGE, ErrorClass::Permanent),
        ] {
            assert_eq!(classify(&code), class, "{}", code.code());
        }
    }
}
