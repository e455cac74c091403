//! The suite's bounded check: every property, within bounds small enough for a debug build
//! to explore every state in seconds. `scripts/model-check.sh` runs deeper bounds.

use orderflow_model::{check, Budget, World};

fn assert_holds(name: &str, world: World) {
    let report = check(world, None);
    println!("{name}: {report}");
    assert!(report.counterexamples.is_empty(), "{name}: {report}");
    assert!(report.unique_states > 10_000, "{name}: the model explored next to nothing: {report}");
}

#[test]
fn every_property_holds_with_a_crash_a_lock_conflict_and_expiry() {
    // o0's hold (1 s) ends at tick 1: a late confirm, the sweepers, the outbox.
    let world = World { max_clock: 1, ..World::issue_14(Budget { crashes: 1, rebalances: 0, conflicts: 1, redeliveries: 0 }) };
    assert_holds("crash, conflict, expiry", world);
}

#[test]
fn every_property_holds_with_a_partition_moving_away_and_back() {
    // Two rebalances: the stale batch of issue #14 (revoked and assigned back mid-write).
    assert_holds("rebalances", World::small(Budget { crashes: 0, rebalances: 2, conflicts: 0, redeliveries: 0 }));
}

#[test]
fn every_property_holds_with_a_crash_and_a_rebalance() {
    assert_holds("crash and rebalance", World::small(Budget { crashes: 1, rebalances: 1, conflicts: 0, redeliveries: 0 }));
}

/// The world where a part holds several components (`World::contended`): a SKIP LOCKED
/// attempt commits the free components and leaves the rest, within the conflict budget.
#[test]
fn every_property_holds_with_partial_commits_a_crash_and_a_redelivery() {
    assert_holds("partial commits, crash, redelivery", World::contended(Budget { crashes: 1, rebalances: 0, conflicts: 1, redeliveries: 1 }));
}

#[test]
fn every_property_holds_with_partial_commits_and_a_rebalance() {
    assert_holds("partial commits, rebalance", World::contended(Budget { crashes: 0, rebalances: 1, conflicts: 2, redeliveries: 0 }));
}

/// The partial commit is a real transition, not a free pass: member 0's batch [place o0 (X),
/// place o1 (Y)] is one part of two components; with X held elsewhere, o1 commits and o0
/// stays as the part, which commits on the next attempt; the batch finishes only then.
#[test]
fn a_part_commits_in_two_transactions_when_a_row_is_held() {
    use orderflow_model::state::StepRef;
    use orderflow_model::{Action, OrderflowModel};
    use stateright::Model;

    let model = OrderflowModel::new(World::contended(Budget { crashes: 0, rebalances: 0, conflicts: 1, redeliveries: 0 }), None);
    let step = |state, action| {
        assert!(model.enabled(&state).contains(&action), "{action:?} enabled in {state:?}");
        model.next_state(&state, action).expect("a successor")
    };
    let state = step(model.initial(), Action::Poll(0, 0));
    let state = step(state, Action::Start(0));
    let part = &state.members[0].in_flight.as_ref().unwrap().parts[0];
    assert_eq!((part.steps.clone(), part.products.clone()), (vec![StepRef::Place(0), StepRef::Place(1)], vec![0, 1]));
    // Both products held: nothing can go ahead, that is a NOWAIT conflict, not a partial commit.
    let enabled = model.enabled(&state);
    assert!(!enabled.contains(&Action::CommitPartial(0, 0, 0b11)), "{enabled:?}");
    assert!(enabled.contains(&Action::CommitPartial(0, 0, 0b10)), "Y held: o0 goes ahead");
    let state = step(state, Action::CommitPartial(0, 0, 0b01));
    assert!(state.db.orders.contains_key(&1) && !state.db.orders.contains_key(&0), "o1 committed, o0 waits: {:?}", state.db.orders);
    let batch = state.members[0].in_flight.as_ref().unwrap();
    assert_eq!((batch.parts[0].steps.clone(), batch.parts[0].products.clone(), batch.parts[0].committed), (vec![StepRef::Place(0)], vec![0], false));
    assert_eq!(state.budget.conflicts, 0, "a partial commit spends the conflict budget");
    assert!(!model.enabled(&state).contains(&Action::Finish(0)), "the batch is not written yet");
    let state = step(state, Action::CommitPart(0, 0));
    assert!(state.db.orders.contains_key(&0));
    let state = step(state, Action::PublishBatch(0));
    assert_eq!(state.log.len(), 2, "both placements' events: {:?}", state.log);
    let state = step(state, Action::Finish(0));
    assert_eq!(state.committed, vec![2, 0]);
}
