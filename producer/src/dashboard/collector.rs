//! The background task behind the dashboard: once a second it reads the consumers' status
//! rows and the inventory rows of the products shown (one indexed `= ANY` lookup, never a
//! scan of `orders`), builds one snapshot, serializes it once, and hands it to every
//! viewer through a `watch` channel. Its cost does not depend on the number of viewers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::Bytes;
use chrono::Utc;
use deadpool_postgres::Pool;
use tokio::sync::watch;

use orderflow_common::errors::Chain;
use orderflow_common::log_limit::{self, LogLimiter};
use orderflow_common::member_report::MemberReport;

use super::snapshot::{products_to_read, HistoryPoint, ProductView, Snapshot, StatusRow, Tracker, FORGET_AFTER};

/// Distinct product ids read for viewers' requests, across all viewers: bounds the
/// inventory lookup whatever they type.
pub const MAX_REQUESTED_TOTAL: usize = 200;
/// Database reads slower than this are given up; the snapshot then names the problem.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

static READ_ERRORS: LogLimiter = LogLimiter::new(log_limit::EVERY);

const READ_STATUS: &str = "SELECT report, EXTRACT(EPOCH FROM now() - updated_at)::float8 FROM consumer_status";
const FORGET: &str = "DELETE FROM consumer_status WHERE updated_at < now() - make_interval(secs => $1)";
const READ_INVENTORY: &str = "SELECT product_id, product_name, available_quantity, reserved_quantity, total_quantity, \
     sold_quantity, received_quantity FROM inventory WHERE product_id = ANY($1)";

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
}

/// Orders this producer accepted, counted by the order routes.
#[derive(Debug, Default)]
pub struct AcceptedCounter(AtomicU64);

impl AcceptedCounter {
    pub fn add(&self, orders: usize) {
        self.0.fetch_add(orders as u64, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Product ids the connected viewers typed, counted per viewer so that one leaving does
/// not drop another's.
#[derive(Debug, Default)]
pub struct RequestedProducts(Mutex<HashMap<String, usize>>);

/// Held by a viewer's event stream; dropping it (the viewer left) withdraws its products.
pub struct Registration {
    registry: Arc<RequestedProducts>,
    products: Vec<String>,
}

impl RequestedProducts {
    pub fn register(self: &Arc<Self>, products: Vec<String>) -> Registration {
        let mut counts = self.lock();
        for product in &products {
            *counts.entry(product.clone()).or_default() += 1;
        }
        Registration { registry: self.clone(), products }
    }

    /// At most `MAX_REQUESTED_TOTAL`, by product id.
    pub fn current(&self) -> Vec<String> {
        let mut products: Vec<String> = self.lock().keys().cloned().collect();
        products.sort_unstable();
        products.truncate(MAX_REQUESTED_TOTAL);
        products
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut counts = self.registry.lock();
        for product in &self.products {
            if let Some(count) = counts.get_mut(product) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(product);
                }
            }
        }
    }
}

/// What the viewers read: the latest snapshot as a ready SSE frame, and the chart history.
pub struct Published {
    pub frames: watch::Receiver<Bytes>,
    pub history: Arc<Mutex<Vec<HistoryPoint>>>,
}

#[derive(Clone)]
pub struct Collector {
    pub pool: Pool,
    pub accepted: Arc<AcceptedCounter>,
    pub requested: Arc<RequestedProducts>,
    pub every: Duration,
}

impl Collector {
    /// Starts the task under a supervisor: it runs until the process ends, and if it
    /// panics the supervisor logs why and starts it again a second later. A broken
    /// dashboard must not stop the producer from taking orders, nor go unnoticed.
    pub fn spawn(self) -> Published {
        let (sender, frames) = watch::channel(Bytes::new());
        let history = Arc::new(Mutex::new(Vec::new()));
        let shared = history.clone();
        tokio::spawn(async move {
            loop {
                let outcome = tokio::spawn(self.clone().run(sender.clone(), shared.clone())).await;
                let cause = match outcome {
                    Ok(never) => match never {},
                    Err(error) if error.is_panic() => panic_message(error.into_panic()),
                    Err(error) => error.to_string(),
                };
                tracing::error!(cause, "the dashboard snapshot task ended unexpectedly; restarting it in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Published { frames, history }
    }

    async fn run(self, sender: watch::Sender<Bytes>, history: Arc<Mutex<Vec<HistoryPoint>>>) -> std::convert::Infallible {
        let mut tracker = Tracker::default();
        let mut ticker = tokio::time::interval(self.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            ticker.tick().await;
            ticks += 1;
            let snapshot = self.tick(&mut tracker, ticks % 10 == 0).await;
            *history.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = tracker.history();
            let json = serde_json::to_string(&snapshot).expect("a plain struct serializes");
            // Nobody watching is fine: the next viewer gets the next snapshot.
            sender.send_replace(Bytes::from(format!("event: snapshot\ndata: {json}\n\n")));
        }
    }

    async fn tick(&self, tracker: &mut Tracker, forget: bool) -> Snapshot {
        let rows = match self.read_status(forget).await {
            Ok(rows) => Ok(rows),
            Err(error) => Err(self.problem("consumer status", &error)),
        };
        let (rows, mut problems) = match rows {
            Ok(rows) => (rows, Vec::new()),
            Err(problem) => (Vec::new(), vec![problem]),
        };
        let observation = tracker.observe(Utc::now(), rows, self.accepted.get());
        let mut snapshot = observation.snapshot;
        let ids = products_to_read(&observation.hot, &self.requested.current());
        match self.read_inventory(&ids).await {
            Ok(mut products) => {
                let recent: HashMap<&str, u64> = observation.hot.iter().map(|(p, c)| (p.as_str(), *c)).collect();
                for product in &mut products {
                    product.recent_orders = recent.get(product.product_id.as_str()).copied().unwrap_or(0);
                    product.hot = recent.contains_key(product.product_id.as_str());
                }
                // In the order asked: busiest first, then the requested ones.
                products.sort_by_key(|p| ids.iter().position(|id| *id == p.product_id));
                snapshot.products = products;
            }
            Err(error) => problems.push(self.problem("inventory", &error)),
        }
        snapshot.problems.extend(problems);
        snapshot
    }

    fn problem(&self, what: &str, error: &ReadError) -> String {
        let problem = format!("dashboard cannot read {what}: {}", Chain(error));
        if let Some(suppressed) = READ_ERRORS.allow(what) {
            tracing::warn!(error = %Chain(error), suppressed, what, "dashboard read failed");
        }
        problem
    }

    async fn read_status(&self, forget: bool) -> Result<Vec<StatusRow>, ReadError> {
        let read = async {
            let client = self.pool.get().await?;
            if forget {
                client.execute(FORGET, &[&FORGET_AFTER.as_secs_f64()]).await?;
            }
            let rows = client.query(READ_STATUS, &[]).await?;
            Ok::<_, ReadError>(
                rows.iter()
                    .filter_map(|row| {
                        let report: serde_json::Value = row.get(0);
                        let age: f64 = row.get(1);
                        // A row another version wrote in a shape this one does not know is
                        // skipped, not fatal: the dashboard shows the others.
                        let report: MemberReport = serde_json::from_value(report).ok()?;
                        Some(StatusRow { report, age: Duration::from_secs_f64(age.max(0.0)) })
                    })
                    .collect(),
            )
        };
        tokio::time::timeout(READ_TIMEOUT, read).await.map_err(|_| ReadError::TimedOut(READ_TIMEOUT))?
    }

    async fn read_inventory(&self, ids: &[String]) -> Result<Vec<ProductView>, ReadError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let read = async {
            let client = self.pool.get().await?;
            let statement = client.prepare_cached(READ_INVENTORY).await?;
            let rows = client.query(&statement, &[&ids]).await?;
            Ok::<_, ReadError>(
                rows.iter()
                    .map(|row| ProductView {
                        product_id: row.get(0),
                        product_name: row.get(1),
                        available: row.get(2),
                        reserved: row.get(3),
                        total: row.get(4),
                        sold: row.get(5),
                        received: row.get(6),
                        recent_orders: 0,
                        hot: false,
                    })
                    .collect(),
            )
        };
        tokio::time::timeout(READ_TIMEOUT, read).await.map_err(|_| ReadError::TimedOut(READ_TIMEOUT))?
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "non-string panic payload".to_owned(), |s| (*s).to_owned()),
    }
}
