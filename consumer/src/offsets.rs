//! Offsets that are safe to commit: the next offset after messages whose effects are
//! committed in PostgreSQL. Shared between the batch loop and the rebalance callback.

use std::collections::HashMap;
use std::sync::Mutex;

use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, Default)]
pub struct ProcessedOffsets {
    next: Mutex<HashMap<i32, i64>>,
}

impl ProcessedOffsets {
    /// Records that every message of `partition` up to and including `offset` is done.
    pub fn record(&self, partition: i32, offset: i64) {
        let mut next = self.next.lock().expect("offsets lock poisoned");
        let entry = next.entry(partition).or_insert(offset + 1);
        *entry = (*entry).max(offset + 1);
    }

    /// The commit list for `partitions`, or for all known partitions when `None`.
    pub fn to_commit(&self, topic: &str, partitions: Option<&[i32]>) -> TopicPartitionList {
        let next = self.next.lock().expect("offsets lock poisoned");
        let mut list = TopicPartitionList::new();
        for (partition, offset) in next.iter() {
            if partitions.is_none_or(|wanted| wanted.contains(partition)) {
                list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .expect("a fresh list accepts any offset");
            }
        }
        list
    }

    /// Forgets partitions this member no longer owns: the next owner commits for them.
    pub fn forget(&self, partitions: &[i32]) {
        let mut next = self.next.lock().expect("offsets lock poisoned");
        next.retain(|partition, _| !partitions.contains(partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_the_offset_after_the_highest_done() {
        let offsets = ProcessedOffsets::default();
        offsets.record(3, 10);
        offsets.record(3, 7);
        offsets.record(1, 0);
        let list = offsets.to_commit("t", None);
        assert_eq!(list.find_partition("t", 3).unwrap().offset(), Offset::Offset(11));
        assert_eq!(list.find_partition("t", 1).unwrap().offset(), Offset::Offset(1));
        let only = offsets.to_commit("t", Some(&[1]));
        assert_eq!(only.count(), 1);
        offsets.forget(&[1]);
        assert!(offsets.to_commit("t", Some(&[1])).count() == 0);
    }
}
