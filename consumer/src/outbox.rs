//! The outbox: events of changes that no Kafka offset holds back (expiry sweeps, parked
//! commands decided at placement or by the sweeper, refusals of commands whose order never
//! came). They are written in the transaction of their change and published by `relay`:
//! claim rows (`FOR UPDATE SKIP LOCKED`, so relays of several consumers never take the same
//! rows), publish, wait for the acknowledgements, delete, commit. A crash after the publish
//! and before the commit publishes those rows again: at least once, same event_id.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use tokio_util::sync::CancellationToken;

use orderflow_common::acked::PublishError;
use orderflow_common::errors::Chain;
use orderflow_common::events::OrderEvent;
use orderflow_common::log_limit::{self, LogLimiter};

use crate::events::{EventPublisher, StoredEvent};
use crate::fault;
use crate::protocol_trace::{self, Step};

/// Rows per relay transaction.
const CLAIM: i64 = 5_000;

const INSERT: &str = "INSERT INTO order_events_outbox (event_id, customer_id, payload) \
     SELECT e.event_id, e.customer_id, e.payload::jsonb FROM unnest($1::uuid[], $2::text[], $3::text[]) AS e(event_id, customer_id, payload)";

const CLAIM_ROWS: &str = "SELECT id, customer_id, payload::text, event_id FROM order_events_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED";

const DELETE_ROWS: &str = "DELETE FROM order_events_outbox WHERE id = ANY($1)";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("no database connection")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error")]
    Database(#[from] tokio_postgres::Error),
    #[error("order-events did not take the outbox's events")]
    Publish(#[from] PublishError),
}

/// Writes `events` in the caller's transaction: they are published only if it commits.
pub async fn write(transaction: &Transaction<'_>, events: &[OrderEvent]) -> Result<(), tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
    let keys: Vec<&str> = events.iter().map(|e| e.customer_id.as_str()).collect();
    let payloads: Vec<String> = events.iter().map(|e| String::from_utf8(e.to_json()).expect("JSON is UTF-8")).collect();
    let insert = transaction.prepare_cached(INSERT).await?;
    transaction.execute(&insert, &[&ids, &keys, &payloads]).await?;
    Ok(())
}

pub struct Relay {
    pool: Pool,
    publisher: Arc<EventPublisher>,
}

static RELAY_ERRORS: LogLimiter = LogLimiter::new(log_limit::EVERY);

impl Relay {
    pub fn new(pool: Pool, publisher: Arc<EventPublisher>) -> Self {
        Self { pool, publisher }
    }

    /// Publishes and deletes outbox rows until none is left unclaimed; returns how many.
    pub async fn relay(&self) -> Result<u64, RelayError> {
        let mut relayed = 0;
        loop {
            let batch = self.relay_batch().await?;
            relayed += batch;
            if batch < CLAIM as u64 {
                return Ok(relayed);
            }
        }
    }

    async fn relay_batch(&self) -> Result<u64, RelayError> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let claim = transaction.prepare_cached(CLAIM_ROWS).await?;
        let rows = transaction.query(&claim, &[&CLAIM]).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        let events: Vec<StoredEvent> = rows.iter().map(|row| StoredEvent { customer_id: row.get(1), payload: row.get(2) }).collect();
        // On failure the transaction rolls back when dropped: the rows stay for the next try.
        self.publisher.publish(&events, "outbox").await?;
        protocol_trace::record(|| Step::EventsPublished { event_ids: rows.iter().map(|row| row.get(3)).collect(), via_outbox: true });
        let delete = transaction.prepare_cached(DELETE_ROWS).await?;
        transaction.execute(&delete, &[&ids]).await?;
        transaction.commit().await?;
        Ok(ids.len() as u64)
    }

    /// Relays right after a writer's commit; a failure is left to the periodic relay.
    pub async fn relay_now(&self) {
        if let Err(error) = self.relay().await {
            if let Some(suppressed) = RELAY_ERRORS.allow("relay") {
                tracing::warn!(error = %Chain(&error), suppressed, "outbox relay failed; the periodic relay retries");
            }
        }
    }

    /// The periodic relay: picks up rows whose writer crashed (or failed to publish) before
    /// relaying them, and exports the backlog.
    pub async fn run(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.relay_now().await;
            match self.backlog().await {
                Ok(backlog) => metrics::gauge!("order_events_outbox_backlog").set(backlog as f64),
                Err(error) => {
                    if let Some(suppressed) = RELAY_ERRORS.allow("backlog") {
                        tracing::warn!(error = %Chain(&error), suppressed, "could not count the outbox");
                    }
                }
            }
        }
    }

    pub async fn backlog(&self) -> Result<i64, RelayError> {
        Ok(self.pool.get().await?.query_one("SELECT count(*) FROM order_events_outbox", &[]).await?.get(0))
    }
}

/// After a commit that wrote outbox rows: the fault switch (tests), then the relay.
pub async fn after_commit(relay: Option<&Relay>) {
    fault::after_commit(fault::Point::Outbox);
    if let Some(relay) = relay {
        relay.relay_now().await;
    }
}
