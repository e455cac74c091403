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
