//! Offsets that are safe to commit: the next offset after messages whose effects are
//! committed in PostgreSQL. Shared between the batch loop and the rebalance callback, with
//! the assignment ticket of each partition: a partition revoked and assigned back (even to
//! this member) gets a new ticket, so a batch polled under the old one is known to be stale.

use std::collections::HashMap;
use std::sync::Mutex;

use rdkafka::{Offset, TopicPartitionList};

/// One assignment of a partition to this member. Messages carry the ticket of the
/// assignment they were polled under.
pub type Ticket = u64;

#[derive(Debug, Default)]
pub struct ProcessedOffsets {
    next: Mutex<HashMap<i32, i64>>,
    tickets: Mutex<Tickets>,
}

#[derive(Debug, Default)]
struct Tickets {
    current: HashMap<i32, Ticket>,
    issued: Ticket,
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
        let mut list = TopicPartitionList::new();
        for (partition, offset) in self.pending(partitions) {
            list.add_partition_offset(topic, partition, Offset::Offset(offset)).expect("a fresh list accepts any offset");
        }
        list
    }

    /// What `to_commit` commits, as plain (partition, next offset) pairs sorted by partition:
    /// the same decision without rdkafka's list, for the model checker and the protocol trace.
    pub fn pending(&self, partitions: Option<&[i32]>) -> Vec<(i32, i64)> {
        let next = self.next.lock().expect("offsets lock poisoned");
        let mut pending: Vec<(i32, i64)> =
            next.iter().filter(|(partition, _)| partitions.is_none_or(|wanted| wanted.contains(partition))).map(|(p, o)| (*p, *o)).collect();
        pending.sort_unstable();
        pending
    }

    /// Forgets partitions this member no longer owns: the next owner commits for them. Their
    /// tickets end: what was polled under them is stale from now on.
    pub fn forget(&self, partitions: &[i32]) {
        let mut next = self.next.lock().expect("offsets lock poisoned");
        next.retain(|partition, _| !partitions.contains(partition));
        let mut tickets = self.tickets.lock().expect("tickets lock poisoned");
        tickets.current.retain(|partition, _| !partitions.contains(partition));
    }

    /// Gives newly assigned partitions a new ticket each (the assign callback).
    pub fn assign(&self, partitions: &[i32]) {
        let mut tickets = self.tickets.lock().expect("tickets lock poisoned");
        for partition in partitions {
            tickets.issued += 1;
            let issued = tickets.issued;
            tickets.current.insert(*partition, issued);
        }
    }

    /// The ticket of the partition's current assignment; `None` when it is not assigned (or
    /// was assigned before tickets were handed out).
    pub fn ticket(&self, partition: i32) -> Option<Ticket> {
        self.tickets.lock().expect("tickets lock poisoned").current.get(&partition).copied()
    }
}

/// Whether a message polled under `polled` is still this member's: its partition is assigned
/// now, and under the same assignment. A partition revoked and assigned back since the poll
/// has a new ticket; the other member may have moved its offset past this message meanwhile.
pub fn current(assigned: bool, polled: Option<Ticket>, now: Option<Ticket>) -> bool {
    assigned && polled == now
}

/// Which positions (partition, offset, ticket at poll) of a finished batch may be recorded:
/// those still `current`. A partition revoked while the batch was written is its new
/// owner's to commit, who re-applies its messages idempotently; one revoked and assigned
/// back is this member's again, but the other member may have committed past the batch
/// meanwhile, and recording the stale positions would move the committed offset backwards.
pub fn recordable(positions: &[(i32, i64, Option<Ticket>)], assigned: &[i32], ticket: impl Fn(i32) -> Option<Ticket>) -> Vec<(i32, i64)> {
    positions
        .iter()
        .filter(|(partition, _, polled)| current(assigned.contains(partition), *polled, ticket(*partition)))
        .map(|(partition, offset, _)| (*partition, *offset))
        .collect()
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

    #[test]
    fn a_batch_polled_before_a_revoke_and_reassignment_is_stale() {
        // Found by the model checker (issue #14): P0 polled under one assignment, revoked,
        // moved to another member who committed past it, assigned back. The batch's positions
        // must not be recorded, or the group's offset moves backwards.
        let offsets = ProcessedOffsets::default();
        offsets.assign(&[0, 1]);
        let polled = [(0, 4, offsets.ticket(0)), (1, 7, offsets.ticket(1))];
        offsets.forget(&[0]);
        assert_eq!(recordable(&polled, &[1], |p| offsets.ticket(p)), [(1, 7)], "revoked: not ours");
        offsets.assign(&[0]);
        assert_eq!(recordable(&polled, &[0, 1], |p| offsets.ticket(p)), [(1, 7)], "assigned back: stale all the same");
        let fresh = [(0, 9, offsets.ticket(0))];
        assert_eq!(recordable(&fresh, &[0, 1], |p| offsets.ticket(p)), [(0, 9)]);
        // Without any assign callback (no tickets at all), assignment alone decides, as before.
        let untracked = ProcessedOffsets::default();
        assert_eq!(recordable(&[(2, 1, None)], &[2], |p| untracked.ticket(p)), [(2, 1)]);
    }
}
