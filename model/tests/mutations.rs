//! A checker is trusted only after it has caught a broken protocol: every mutation must
//! produce a counterexample, for the property it breaks, with a readable trace.

use orderflow_model::properties::*;
use orderflow_model::{check, Budget, Mutation, World};

/// The faults a mutation needs to show, and no more: the search stops at the first
/// counterexample, but a smaller space finds it sooner in a debug build.
fn faults(crashes: u8, rebalances: u8) -> World {
    World::small(Budget { crashes, rebalances, conflicts: 0, redeliveries: 0 })
}

fn caught(mutation: Mutation, world: World, expected: &[&str]) {
    let report = check(world, Some(mutation));
    println!("{mutation:?}: {report}");
    assert!(!report.counterexamples.is_empty(), "{mutation:?} went unnoticed: {report}");
    let found: Vec<&str> = report.counterexamples.iter().map(|(name, _)| *name).collect();
    assert!(found.iter().any(|name| expected.contains(name)), "{mutation:?}: expected one of {expected:?}, found {found:?}");
    for (_, trace) in &report.counterexamples {
        assert!(trace.lines().count() > 2 && trace.contains("counterexample to"), "{trace}");
    }
}

#[test]
fn offsets_committed_before_the_database_are_caught() {
    caught(Mutation::OffsetsBeforeDb, faults(1, 0), &[OFFSETS_BEHIND_DB]);
}

#[test]
fn an_event_published_before_the_commit_is_caught() {
    caught(Mutation::EventsBeforeCommit, faults(1, 0), &[NO_EVENT_WITHOUT_CHANGE]);
}

#[test]
fn no_dedup_is_caught() {
    caught(Mutation::NoDedup, faults(0, 0), &[APPLIED_AT_MOST_ONCE, NEVER_OVERSOLD, STOCK_ADDS_UP]);
}

#[test]
fn expiry_without_the_row_lock_is_caught() {
    caught(Mutation::ExpiryWithoutLock, World { max_clock: 1, ..faults(0, 0) }, &[RELEASED_AT_MOST_ONCE, STOCK_ADDS_UP]);
}

#[test]
fn a_cancel_applied_before_its_order_is_caught() {
    caught(Mutation::CancelBeforeOrder, faults(0, 1), &[COMMANDS_WAIT_FOR_ORDERS]);
}

#[test]
fn a_cart_committed_part_by_part_is_caught() {
    caught(Mutation::CartPartByPart, faults(0, 0), &[STOCK_ADDS_UP]);
}

#[test]
fn the_stale_batch_of_issue_14_is_caught() {
    // The rule before the fix: positions recorded when the partition is assigned now.
    caught(Mutation::StaleBatchOffsets, faults(0, 2), &[OFFSETS_NEVER_BACK]);
}

#[test]
fn a_partial_commit_that_cuts_a_cart_is_caught() {
    // A broken go_ahead (each line on its own): with one product of the cart held elsewhere,
    // the cart's other line commits alone. One lock conflict in the budget is enough.
    let conflict = |world: World| World { budget: Budget { conflicts: 1, ..world.budget }, ..world };
    caught(Mutation::GoAheadPerLine, conflict(faults(0, 0)), &[STOCK_ADDS_UP]);
    caught(Mutation::GoAheadPerLine, World::contended(Budget { crashes: 0, rebalances: 0, conflicts: 1, redeliveries: 0 }), &[STOCK_ADDS_UP]);
}

#[test]
fn without_the_mutation_the_same_bounds_hold() {
    // The correct go_ahead in the same bounds: the cart waits whole.
    let report = check(World::small(Budget { crashes: 0, rebalances: 0, conflicts: 1, redeliveries: 0 }), None);
    assert!(report.counterexamples.is_empty(), "{report}");
}
