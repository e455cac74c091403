//! Operator control of the consumer: paused or running, plus what /status shows about
//! partitions. Shared between the admin server and the Kafka context.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Control {
    paused: AtomicBool,
    partitions: Mutex<BTreeMap<i32, PartitionStatus>>,
}

/// As of librdkafka's last statistics report (at most `statistics.interval.ms` old).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    pub committed_offset: i64,
    pub high_watermark: i64,
    pub lag: i64,
}

impl Control {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    pub fn update_partitions(&self, statuses: impl IntoIterator<Item = PartitionStatus>) {
        let mut partitions = self.partitions.lock().expect("partitions lock poisoned");
        partitions.clear();
        partitions.extend(statuses.into_iter().map(|status| (status.partition, status)));
    }

    /// A partition's lag as of librdkafka's last statistics, if it reported one yet.
    pub fn lag(&self, partition: i32) -> Option<i64> {
        self.partitions.lock().expect("partitions lock poisoned").get(&partition).map(|status| status.lag)
    }

    pub fn partitions(&self, assigned: &[i32]) -> Vec<serde_json::Value> {
        let known = self.partitions.lock().expect("partitions lock poisoned");
        assigned
            .iter()
            .map(|partition| match known.get(partition) {
                Some(status) => serde_json::to_value(status).expect("plain struct serializes"),
                None => serde_json::json!({"partition": partition, "committed_offset": null, "lag": null}),
            })
            .collect()
    }
}
