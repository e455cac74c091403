//! Leaving the consumer group at shutdown, within a time limit.
//!
//! rust-rdkafka 0.39 closes a consumer in `BaseConsumer`'s `Drop`: it starts librdkafka's
//! close and polls until librdkafka says it is closed, with no limit. A member that the group
//! had already fenced during a rebalance (its final and its revoke commits refused with
//! `IllegalGeneration` and `UnknownMemberId`) was seen three times never to get there: the
//! process sat in that loop and ignored every later SIGTERM, once for an hour. So the batch
//! loop closes the consumer itself, polling it the same way as `Drop` does, for at most
//! `limit`. Once closed, the `Drop` loop ends at once. Past the limit the client is leaked:
//! the process is on its way out, and the group hands the member's partitions on after
//! `session.timeout.ms`, as after a crash. Either way every offset recorded was committed
//! before (or is redelivered and re-applied idempotently).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka_sys as rdsys;
use tokio::time::Instant;

use crate::pipeline::OrderConsumer;

/// How long a graceful leave may take. librdkafka's LeaveGroup is one round trip; 10 s
/// covers a revoke callback's synchronous commit on a slow broker.
pub const LEAVE_LIMIT: Duration = Duration::from_secs(10);

/// How the leave ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Left {
    /// librdkafka reports the consumer closed: the group was left (or knew it was gone).
    Closed,
    /// Not closed within the limit; the client is leaked.
    TimedOut,
    /// librdkafka refused to start the close; the client is leaked.
    NotStarted(RDKafkaErrorCode),
}

/// Closes `consumer` (revoking its partitions through the context's rebalance callback,
/// then leaving the group), polling it until closed or until `limit` has passed. Messages
/// that arrive meanwhile are dropped unprocessed: their offsets are not recorded, so the
/// next owner reads them again.
pub async fn leave_group(consumer: &Arc<OrderConsumer>, limit: Duration) -> Left {
    // SAFETY: `rk` is the live consumer's handle, kept alive by `consumer` for this call.
    // `rd_kafka_queue_get_consumer` returns a new reference to its consumer queue (the one
    // the StreamConsumer polls, where the close's rebalance events arrive); librdkafka keeps
    // its own reference for the close, so ours is released at once. A returned error is
    // owned by the caller and destroyed here.
    let refused = unsafe {
        let rk = consumer.client().native_ptr();
        let queue = rdsys::rd_kafka_queue_get_consumer(rk);
        let error = rdsys::rd_kafka_consumer_close_queue(rk, queue);
        if !queue.is_null() {
            rdsys::rd_kafka_queue_destroy(queue);
        }
        if error.is_null() {
            None
        } else {
            let code: RDKafkaErrorCode = rdsys::rd_kafka_error_code(error).into();
            rdsys::rd_kafka_error_destroy(error);
            Some(code)
        }
    };
    if let Some(code) = refused {
        std::mem::forget(consumer.clone());
        return Left::NotStarted(code);
    }
    let deadline = Instant::now() + limit;
    // SAFETY: as above; `rd_kafka_consumer_closed` only reads the handle's state. (The raw
    // handle is not kept across an await: the batch loop's future must stay `Send`.)
    while unsafe { rdsys::rd_kafka_consumer_closed(consumer.client().native_ptr()) } == 0 {
        if Instant::now() >= deadline {
            std::mem::forget(consumer.clone());
            return Left::TimedOut;
        }
        // Serves the revoke (context.rs) and commit results; `Drop` polls every 100 ms too.
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            // An error event (the broker gone, say) comes back at once: do not spin on it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Left::Closed
}
