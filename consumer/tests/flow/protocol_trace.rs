//! The protocol traces of a crash run and a rebalance run (traced.rs): every step the real
//! binaries took is there, in an order the protocol allows, and the traces add up to what the
//! database holds.
//! These are the checks that need no model; replaying the same traces through the model's
//! transition relation is trace validation proper (issue #14, the model crate).

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use orderflow_common::command::CommandKind;
use orderflow_common::protocol_trace::{CommitCause, Message, Position, Record, Step};

use crate::traced::{crash_run, expected_events, rebalance_run, TracedRun};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_runs_traces_hold_every_step_in_protocol_order() {
    let run = crash_run().await;
    let (crashed, survivor) = (&run.traces[0], &run.traces[1]);
    assert_eq!(Some(crashed.0), run.crashed, "the first member is the one that aborted");
    for (member, records) in &run.traces {
        check_member(*member, records, &run);
    }
    check_against_the_database(&run).await;

    // The crashed member's batch committed and was then delivered again: every order it
    // decided is found applied by the survivor.
    let decided_by_crashed: HashSet<Uuid> = effects(&crashed.1)
        .filter(|(effect, _)| effect.command_id.is_none() && matches!(effect.change.as_str(), "reserved" | "rejected"))
        .map(|(effect, _)| effect.order_id)
        .collect();
    assert!(!decided_by_crashed.is_empty(), "the crashed member committed a part before it aborted");
    let found_applied: HashSet<Uuid> =
        effects(&survivor.1).filter(|(effect, _)| effect.change == "already_applied").map(|(effect, _)| effect.order_id).collect();
    let missing: Vec<&Uuid> = decided_by_crashed.difference(&found_applied).collect();
    assert!(missing.is_empty(), "redelivered to the survivor and found applied: {missing:?} ({})", run.dir.display());
    let final_commit = survivor.1.iter().any(|r| matches!(r.step, Step::OffsetsCommitted { cause: CommitCause::Final, .. }));
    assert!(final_commit, "the survivor, alone in the group, committed its offsets at shutdown ({})", run.dir.display());
    run.clean_up();
}

/// Members join and leave while orders come: partitions move with batches in flight, and the
/// same checks hold for every member and across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_runs_traces_hold_every_step_in_protocol_order() {
    let run = rebalance_run().await;
    for (member, records) in &run.traces {
        check_member(*member, records, &run);
    }
    check_against_the_database(&run).await;
    let count = |matches: fn(&Step) -> bool| run.records().filter(|r| matches(&r.step)).count();
    let revokes = count(|step| matches!(step, Step::Revoked { partitions } if !partitions.is_empty()));
    let revoke_commits = count(|step| matches!(step, Step::OffsetsCommitted { cause: CommitCause::Revoke, .. }));
    let conflicts = count(|step| matches!(step, Step::PartFailed { conflict: true, .. }));
    // Revokes that landed while a batch was being written (between its Polled and its
    // OffsetsRecorded): the case `finish` handles by recording only partitions still assigned.
    let mut in_flight_revokes = 0;
    for (_, records) in &run.traces {
        let mut in_batch = false;
        for record in records {
            match &record.step {
                Step::Polled { .. } => in_batch = true,
                Step::OffsetsRecorded { .. } => in_batch = false,
                Step::Revoked { partitions } if in_batch && !partitions.is_empty() => in_flight_revokes += 1,
                _ => {}
            }
        }
    }
    eprintln!(
        "rebalance run: {revokes} revokes ({in_flight_revokes} with a batch in flight), {revoke_commits} commits on revoke, {conflicts} NOWAIT conflicts, {} records",
        run.records().count()
    );
    assert!(revokes >= 2 && revoke_commits >= 1, "partitions moved, and offsets were committed on revoke ({})", run.dir.display());
    assert!(in_flight_revokes >= 1, "a revoke landed while a batch was in flight ({})", run.dir.display());
    let polling: usize = run.traces.iter().filter(|(_, records)| records.iter().any(|r| matches!(r.step, Step::Polled { .. }))).count();
    assert_eq!(polling, 3, "every member wrote batches ({})", run.dir.display());
    run.clean_up();
}

/// Every effect of the PartCommitted and Swept records, with whether it came from a sweep.
fn effects(records: &[Record]) -> impl Iterator<Item = (&orderflow_common::protocol_trace::Effect, bool)> {
    records.iter().flat_map(|record| match &record.step {
        Step::PartCommitted { effects, .. } => effects.iter().map(|e| (e, false)).collect::<Vec<_>>(),
        Step::Swept { effects, .. } => effects.iter().map(|e| (e, true)).collect(),
        _ => Vec::new(),
    })
}

/// What one batch did between its `Polled` and its `OffsetsRecorded`.
#[derive(Default)]
struct Batch {
    messages: Vec<(Position, Message)>,
    parts: usize,
    /// (order_id, command_id) of every effect.
    effects: HashSet<(Uuid, Option<Uuid>)>,
    events: HashSet<Uuid>,
    published: HashSet<Uuid>,
}

/// One member's trace: numbered from 0, Started first, partitions assigned before they are
/// polled, a batch's offsets recorded only after every message of it has its effect in a
/// committed part and every event of those parts was acknowledged, and committed offsets
/// never past what was recorded. The crashed member ends inside its batch: parts committed,
/// nothing published, no offset recorded or committed; the others finish their last batch.
fn check_member(member: Uuid, records: &[Record], run: &TracedRun) {
    let crashed = run.crashed == Some(member);
    let context = format!("member {member} in {}", run.dir.display());
    assert!(matches!(records.first().map(|r| &r.step), Some(Step::Started { .. })), "Started first: {context}");
    assert!(records.iter().enumerate().all(|(n, r)| r.seq == n as u64 && r.member == member), "seq from 0, one member: {context}");
    let mut assigned: HashSet<i32> = HashSet::new();
    let mut recorded: HashMap<i32, i64> = HashMap::new();
    let mut batch: Option<Batch> = None;
    for record in records.iter().skip(1) {
        let at = format!("seq {} of {context}", record.seq);
        match &record.step {
            Step::Started { .. } => panic!("Started twice: {at}"),
            Step::Assigned { partitions } => assigned.extend(partitions),
            Step::Revoked { partitions } => {
                for partition in partitions {
                    assigned.remove(partition);
                    recorded.remove(partition);
                }
            }
            Step::Polled { messages } => {
                assert!(batch.is_none(), "a batch is polled only after the previous one recorded its offsets: {at}");
                assert!(messages.iter().all(|(position, _)| assigned.contains(&position.partition)), "only assigned partitions are polled: {at}");
                batch = Some(Batch { messages: messages.clone(), ..Batch::default() });
            }
            Step::PartCommitted { effects, events, .. } => {
                let batch = batch.as_mut().unwrap_or_else(|| panic!("a part commits inside a batch: {at}"));
                batch.parts += 1;
                batch.effects.extend(effects.iter().map(|e| (e.order_id, e.command_id)));
                batch.events.extend(events);
            }
            Step::PartFailed { .. } => assert!(batch.is_some(), "a part fails inside a batch: {at}"),
            Step::EventsPublished { event_ids, via_outbox: false } => {
                batch.as_mut().unwrap_or_else(|| panic!("the batch loop publishes inside a batch: {at}")).published.extend(event_ids);
            }
            Step::EventsPublished { via_outbox: true, .. } | Step::Swept { .. } => {}
            Step::OffsetsRecorded { next } => {
                let batch = batch.take().unwrap_or_else(|| panic!("offsets are recorded for a polled batch: {at}"));
                for (position, message) in &batch.messages {
                    let key = match message {
                        Message::Order { order_id, .. } => (*order_id, None),
                        Message::Command { order_id, command_id, .. } => (*order_id, Some(*command_id)),
                        Message::Invalid => continue,
                    };
                    assert!(batch.effects.contains(&key), "{position:?} {message:?} has its effect before its offset is recorded: {at}");
                }
                let unpublished: Vec<&Uuid> = batch.events.difference(&batch.published).collect();
                assert!(unpublished.is_empty(), "every event of the batch acknowledged before its offsets are recorded, not {unpublished:?}: {at}");
                let mut expected: HashMap<i32, i64> = HashMap::new();
                for (position, _) in batch.messages.iter().filter(|(p, _)| assigned.contains(&p.partition)) {
                    let entry = expected.entry(position.partition).or_default();
                    *entry = (*entry).max(position.offset + 1);
                }
                let next: HashMap<i32, i64> = next.iter().map(|p| (p.partition, p.offset)).collect();
                assert_eq!(next, expected, "the offset after the batch's last message, per partition still assigned: {at}");
                for (partition, offset) in next {
                    let entry = recorded.entry(partition).or_default();
                    *entry = (*entry).max(offset);
                }
            }
            Step::OffsetsCommitted { offsets, cause } => {
                for position in offsets {
                    let done = recorded.get(&position.partition).copied().unwrap_or(0);
                    assert!(position.offset <= done, "{cause:?} commit of {position:?} not past what was recorded ({done}): {at}");
                }
            }
        }
    }
    if crashed {
        let batch = batch.expect("the crashed member died inside a batch");
        assert!(batch.parts > 0, "after a part committed: {context}");
        assert!(batch.published.is_empty(), "before its events were published: {context}");
        assert!(!records.iter().any(|r| matches!(r.step, Step::OffsetsCommitted { .. })), "it never committed an offset: {context}");
    } else {
        // Not necessarily with a final commit: one that meets a rebalance in progress (the
        // previous member just left) fails, is logged, and the next owner redelivers.
        assert!(batch.is_none(), "a member stopped by SIGTERM finished its last batch: {context}");
    }
}

/// Across members: each placement decided exactly once (reserved or rejected, as stored),
/// each command decided once (as stored), the holds expired once each by the sweeper, the
/// stock moves add up to the inventory, and every event that came out was recorded as
/// published, for a change that committed.
async fn check_against_the_database(run: &TracedRun) {
    let records: Vec<&Record> = run.records().collect();
    let all: Vec<Record> = records.iter().map(|r| (*r).clone()).collect();
    let client = run.stack.pool.get().await.unwrap();
    let context = format!("traces in {}", run.dir.display());

    for order in &run.orders {
        let decisions: Vec<&str> = effects(&all)
            .filter(|(e, _)| e.order_id == order.order_id && e.command_id.is_none() && matches!(e.change.as_str(), "reserved" | "rejected"))
            .map(|(e, _)| e.change.as_str())
            .collect();
        assert_eq!(decisions.len(), 1, "order {} decided once: {decisions:?} ({context})", order.order_id);
        let status: String = client.query_one("SELECT status FROM orders WHERE order_id = $1", &[&order.order_id]).await.unwrap().get(0);
        assert_eq!(decisions[0] == "rejected", status == "rejected", "order {} is {status} ({context})", order.order_id);
    }
    for hold in &run.holds {
        let sweeps = records.iter().filter(|r| matches!(&r.step, Step::Swept { expired, .. } if expired.contains(hold))).count();
        assert_eq!(sweeps, 1, "hold {hold} expired by one sweep ({context})");
    }
    for command in &run.commands {
        let decisions: Vec<(&str, bool)> = effects(&all)
            .filter(|(e, _)| e.command_id == Some(command.command_id) && !matches!(e.change.as_str(), "already_applied" | "parked"))
            .map(|(e, swept)| (e.change.as_str(), swept))
            .collect();
        assert_eq!(decisions.len(), 1, "command {} decided once: {decisions:?} ({context})", command.command_id);
        let outcome: String =
            client.query_one("SELECT outcome FROM order_commands WHERE command_id = $1", &[&command.command_id]).await.unwrap().get(0);
        let applied = match (command.command, decisions[0].0) {
            (CommandKind::Confirm, "confirmed") | (CommandKind::Cancel, "cancelled") => true,
            (_, "refused" | "expired") => false,
            (kind, change) => panic!("a {kind:?} command cannot make an order {change} ({context})"),
        };
        assert_eq!(outcome == "applied", applied, "command {} is {outcome} ({context})", command.command_id);
    }
    if let Some(stranger) = run.unknown_order_command {
        assert!(effects(&all).any(|(e, swept)| e.command_id == Some(stranger) && e.change == "parked" && !swept), "parked first ({context})");
        assert!(effects(&all).any(|(e, swept)| e.command_id == Some(stranger) && e.change == "refused" && swept), "refused by a sweep ({context})");
    }

    let mut moved: HashMap<&str, (i64, i64, i64)> = HashMap::new();
    let mut made: HashSet<Uuid> = HashSet::new();
    let mut published: HashSet<Uuid> = HashSet::new();
    for record in &records {
        let (stock, events): (&[_], Vec<&Uuid>) = match &record.step {
            Step::PartCommitted { stock, outbox_events, events, .. } => (stock, outbox_events.iter().chain(events).collect()),
            Step::Swept { stock, outbox_events, .. } => (stock, outbox_events.iter().collect()),
            Step::EventsPublished { event_ids, .. } => {
                published.extend(event_ids);
                continue;
            }
            _ => continue,
        };
        made.extend(events);
        for change in stock {
            let entry = moved.entry(change.product_id.as_str()).or_default();
            *entry = (entry.0 + change.available, entry.1 + change.reserved, entry.2 + change.sold);
        }
    }
    for &(product, initial) in &run.stock {
        let row = client
            .query_one("SELECT available_quantity::bigint, reserved_quantity::bigint, sold_quantity::bigint FROM inventory WHERE product_id = $1", &[&product])
            .await
            .unwrap();
        let (available, reserved, sold): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let delta = moved.get(product).copied().unwrap_or_default();
        assert_eq!((initial + delta.0, delta.1, delta.2), (available, reserved, sold), "{product}: the traced stock moves add up ({context})");
    }
    let unrecorded: Vec<&Uuid> = published.difference(&made).collect();
    assert!(unrecorded.is_empty(), "every published event belongs to a committed change: {unrecorded:?} ({context})");
    let expected = expected_events(&run.stack).await;
    let missing: Vec<&Uuid> = expected.iter().filter(|id| !published.contains(id)).collect();
    assert!(missing.is_empty(), "every change's event recorded as published: {missing:?} ({context})");
}
