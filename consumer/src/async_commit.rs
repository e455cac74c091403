//! Asynchronous offset commits whose outcome comes back. rust-rdkafka 0.39's
//! `commit(.., CommitMode::Async)` calls `rd_kafka_commit` without a reply queue, so
//! librdkafka never reports the result and `ConsumerContext::commit_callback` never runs
//! (upstream fede1024/rust-rdkafka#856, fix proposed in #857): a refused commit showed only in
//! librdkafka's own log line. This hands the commit to `rd_kafka_commit_queue` with the
//! consumer's own queue, as that fix does. The result comes back there as an OFFSET_COMMIT
//! event, which the StreamConsumer's poll turns into a `commit_callback` (context.rs: counted
//! in `kafka_offset_commits_total{result}`, failures logged). Drop this once the fix ships.

use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use rdkafka_sys as rdsys;

use crate::pipeline::OrderConsumer;

/// Commit outcomes reported back, for tests and the logs: (accepted, refused).
pub static ACCEPTED: AtomicU64 = AtomicU64::new(0);
pub static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Queues the commit of `offsets`; its outcome reaches `commit_callback` when the consumer is
/// next polled. An error here means it was not even queued.
pub fn commit(consumer: &OrderConsumer, offsets: &TopicPartitionList) -> KafkaResult<()> {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live consumer's handle (borrowed from `consumer` for this call).
    // `rd_kafka_queue_get_consumer` returns a new reference to its consumer queue; librdkafka
    // keeps a reference of its own for the reply, so ours is released right away. The list is
    // copied by librdkafka before the call returns.
    let code = unsafe {
        let queue = rdsys::rd_kafka_queue_get_consumer(rk);
        let code = rdsys::rd_kafka_commit_queue(rk, offsets.ptr(), queue, None, std::ptr::null_mut());
        if !queue.is_null() {
            rdsys::rd_kafka_queue_destroy(queue);
        }
        code
    };
    let code: RDKafkaErrorCode = code.into();
    if code == RDKafkaErrorCode::NoError {
        Ok(())
    } else {
        Err(KafkaError::ConsumerCommit(code))
    }
}

/// Called from `commit_callback`.
pub fn report(accepted: bool) {
    let (counter, result) = if accepted { (&ACCEPTED, "accepted") } else { (&REFUSED, "refused") };
    counter.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("kafka_offset_commits_total", "result" => result).increment(1);
}
