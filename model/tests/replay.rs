//! Trace validation on hand-written traces: one a real consumer could have written, and
//! steps the model does not allow, each refused with a readable divergence.

use uuid::Uuid;

use orderflow_common::events::{event_id, EventType};
use orderflow_common::protocol_trace::{CommitCause, Effect, Message, Position, Record, Step, StockMove};
use orderflow_model::replay::validate;

const A: Uuid = Uuid::from_u128(0xa);
const B: Uuid = Uuid::from_u128(0xb);
const O1: Uuid = Uuid::from_u128(1);
const O2: Uuid = Uuid::from_u128(2);
const K1: Uuid = Uuid::from_u128(0x101);

/// Records of one member, numbered, 10 µs apart from `start`.
fn member(id: Uuid, start: i64, steps: Vec<Step>) -> Vec<Record> {
    steps.into_iter().enumerate().map(|(n, step)| Record { member: id, seq: n as u64, at_us: start + 10 * n as i64, step }).collect()
}

fn at(partition: i32, offset: i64) -> Position {
    Position { partition, offset }
}

fn order(id: Uuid) -> Message {
    Message::Order { order_id: id, lines: vec![("P".into(), 1)] }
}

fn effect(order_id: Uuid, command_id: Option<Uuid>, change: &str) -> Effect {
    Effect { order_id, command_id, change: change.into() }
}

fn reserve(n: i64) -> Vec<StockMove> {
    vec![StockMove { product_id: "P".into(), available: -n, reserved: n, sold: 0 }]
}

fn placed(part: usize, orders: &[Uuid]) -> Step {
    let events: Vec<Uuid> = orders.iter().map(|o| event_id(*o, EventType::Reserved)).collect();
    Step::PartCommitted {
        part,
        effects: orders.iter().map(|o| effect(*o, None, "reserved")).collect(),
        stock: reserve(orders.len() as i64),
        outbox_events: vec![],
        events,
    }
}

/// A crashes after its part committed (nothing published, no offset); B gets the partition,
/// finds o1 applied, applies o2 and a cancel of o1, publishes, records, commits.
fn valid() -> Vec<Vec<Record>> {
    let started = Step::Started { default_hold_seconds: 900, events: true };
    let a = member(A, 0, vec![
        started.clone(),
        Step::Assigned { partitions: vec![0] },
        Step::Polled { messages: vec![(at(0, 0), order(O1))] },
        placed(0, &[O1]),
    ]);
    let cancel = Message::Command { command_id: K1, order_id: O1, command: "cancel".into() };
    let b = member(B, 1000, vec![
        started,
        Step::Assigned { partitions: vec![0] },
        Step::Polled { messages: vec![(at(0, 0), order(O1)), (at(0, 1), order(O2)), (at(0, 2), cancel)] },
        Step::PartCommitted {
            part: 0,
            effects: vec![effect(O1, None, "already_applied"), effect(O2, None, "reserved"), effect(O1, Some(K1), "cancelled")],
            stock: vec![StockMove { product_id: "P".into(), available: 0, reserved: 0, sold: 0 }],
            outbox_events: vec![],
            events: vec![event_id(O1, EventType::Reserved), event_id(O2, EventType::Reserved), event_id(K1, EventType::Cancelled)],
        },
        Step::EventsPublished { event_ids: vec![event_id(O1, EventType::Reserved), event_id(O2, EventType::Reserved), event_id(K1, EventType::Cancelled)], via_outbox: false },
        Step::OffsetsRecorded { next: vec![at(0, 3)] },
        Step::OffsetsCommitted { offsets: vec![at(0, 3)], cause: CommitCause::Batch },
    ]);
    vec![a, b]
}

#[test]
fn a_trace_the_model_allows_validates() {
    let report = validate(&[("P", 2)], &valid()).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!((report.records, report.members, report.orders, report.commands), (11, 2, 2, 1));
    assert!(report.unpublished.is_empty(), "{report:?}");
}

fn refused(trace: Vec<Vec<Record>>, expected: &str) {
    let divergence = validate(&[("P", 2)], &trace).expect_err("the model does not allow this trace");
    let text = divergence.to_string();
    println!("{text}");
    assert!(text.contains(expected), "expected \"{expected}\" in: {text}");
    assert!(text.contains("the step:"), "{text}");
}

#[test]
fn offsets_committed_before_the_part_are_refused() {
    let mut trace = valid();
    // A commits P0's offset right after polling, before its part's transaction.
    trace[0].insert(3, Record { member: A, seq: 3, at_us: 25, step: Step::OffsetsCommitted { offsets: vec![at(0, 1)], cause: CommitCause::Batch } });
    refused(trace, "whose effect is not committed");
}

#[test]
fn offsets_recorded_before_the_parts_commit_are_refused() {
    let mut trace = valid();
    trace[1].swap(3, 5);
    for (n, r) in trace[1].iter_mut().enumerate() {
        r.seq = n as u64;
        r.at_us = 1000 + 10 * n as i64;
    }
    refused(trace, "offsets recorded past P0@1");
}

#[test]
fn an_event_without_its_change_is_refused() {
    let mut trace = valid();
    // A publishes o1's event although no transaction of its recorded the change yet.
    trace[0].insert(3, Record { member: A, seq: 3, at_us: 25, step: Step::EventsPublished { event_ids: vec![event_id(O1, EventType::Reserved)], via_outbox: false } });
    refused(trace, "no PartCommitted or Swept recorded");
}

#[test]
fn a_placement_applied_twice_is_refused() {
    let mut trace = valid();
    if let Step::PartCommitted { effects, stock, .. } = &mut trace[1][3].step {
        effects[0].change = "reserved".into();
        *stock = reserve(2);
    }
    refused(trace, "applied a second time");
}

#[test]
fn stock_that_does_not_add_up_is_refused() {
    let mut trace = valid();
    // o1 reserved, but the stock moved by two units.
    trace[0][3].step = Step::PartCommitted { part: 0, effects: vec![effect(O1, None, "reserved")], stock: reserve(2), outbox_events: vec![], events: vec![] };
    refused(trace, "the orders hold 1");
}

#[test]
fn a_hold_released_twice_is_refused() {
    let mut trace = valid();
    let expire = Step::Swept {
        expired: vec![O1],
        stock: vec![StockMove { product_id: "P".into(), available: 1, reserved: -1, sold: 0 }],
        outbox_events: vec![event_id(O1, EventType::Expired)],
        effects: vec![],
    };
    // The sweeper expires o1 after B cancelled it.
    trace[1].push(Record { member: B, seq: 7, at_us: 2000, step: expire });
    refused(trace, "ended from cancelled");
}

#[test]
fn a_committed_offset_moving_backwards_is_refused() {
    let mut trace = valid();
    // A stale batch's commit after B's: the group's offset of P0 would go from 3 back to 1.
    trace[1].push(Record { member: B, seq: 7, at_us: 2000, step: Step::OffsetsCommitted { offsets: vec![at(0, 1)], cause: CommitCause::Revoke } });
    refused(trace, "moves backwards, from 3 to 1");
}

const CART: Uuid = Uuid::from_u128(3);
const ON_Y: Uuid = Uuid::from_u128(4);
const ON_Z: Uuid = Uuid::from_u128(5);

fn moved(product: &str, reserved: i64) -> StockMove {
    StockMove { product_id: product.into(), available: -reserved, reserved, sold: 0 }
}

fn committed(part: usize, effects: Vec<Effect>, stock: Vec<StockMove>) -> Step {
    let events = effects
        .iter()
        .map(|e| event_id(e.order_id, if e.change == "reserved" { EventType::Reserved } else { EventType::Rejected }))
        .collect();
    Step::PartCommitted { part, effects, stock, outbox_events: vec![], events }
}

/// One part of three steps: a cart over X and Y, then an order of Y (linked to the cart
/// through Y), then an order of Z. Y is held elsewhere: the first transaction (SKIP LOCKED)
/// commits the Z component; the second, the cart and the order of Y, in offset order (the
/// cart takes the last unit of Y). Two `part_committed` records of part 0.
fn partial(first: Step, second: Step) -> Vec<Vec<Record>> {
    let cart = Message::Order { order_id: CART, lines: vec![("X".into(), 1), ("Y".into(), 1)] };
    let on_y = Message::Order { order_id: ON_Y, lines: vec![("Y".into(), 1)] };
    let on_z = Message::Order { order_id: ON_Z, lines: vec![("Z".into(), 1)] };
    let events = [event_id(ON_Z, EventType::Reserved), event_id(CART, EventType::Reserved), event_id(ON_Y, EventType::Rejected)];
    vec![member(A, 0, vec![
        Step::Started { default_hold_seconds: 900, events: true },
        Step::Assigned { partitions: vec![0] },
        Step::Polled { messages: vec![(at(0, 0), cart), (at(0, 1), on_y), (at(0, 2), on_z)] },
        first,
        second,
        Step::EventsPublished { event_ids: events.to_vec(), via_outbox: false },
        Step::OffsetsRecorded { next: vec![at(0, 3)] },
        Step::OffsetsCommitted { offsets: vec![at(0, 3)], cause: CommitCause::Batch },
    ])]
}

const STOCK: [(&str, i64); 3] = [("X", 1), ("Y", 1), ("Z", 1)];

#[test]
fn a_part_committed_in_two_transactions_validates() {
    let trace = partial(
        committed(0, vec![effect(ON_Z, None, "reserved")], vec![moved("Z", 1)]),
        committed(0, vec![effect(CART, None, "reserved"), effect(ON_Y, None, "rejected")], vec![moved("X", 1), moved("Y", 1)]),
    );
    let report = validate(&STOCK, &trace).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!((report.orders, report.committed_transactions, report.partial_commits), (3, 2, 1));
    assert!(report.unpublished.is_empty(), "{report:?}");
}

#[test]
fn a_step_committed_ahead_of_the_cart_it_is_linked_to_is_refused() {
    // A go_ahead that judged each step alone: Y's order goes ahead (its own row is free)
    // while the earlier cart, linked to it through Y, waits for X; Y's unit goes to the
    // later order. The stock adds up: only the partial-commit rule sees it.
    let trace = partial(
        committed(0, vec![effect(ON_Y, None, "reserved"), effect(ON_Z, None, "reserved")], vec![moved("Y", 1), moved("Z", 1)]),
        committed(0, vec![effect(CART, None, "rejected")], vec![]),
    );
    let divergence = validate(&STOCK, &trace).expect_err("the model does not allow this trace");
    let text = divergence.to_string();
    println!("{text}");
    assert!(text.contains(&format!("part 0 commits {ON_Y} without {CART}")), "{text}");
    assert!(text.contains("whole components"), "{text}");
}

#[test]
fn a_step_committed_twice_in_one_batch_is_refused() {
    let trace = partial(
        committed(0, vec![effect(ON_Z, None, "reserved")], vec![moved("Z", 1)]),
        committed(0, vec![effect(CART, None, "reserved"), effect(ON_Y, None, "rejected"), effect(ON_Z, None, "already_applied")], vec![moved("X", 1), moved("Y", 1)]),
    );
    let divergence = validate(&STOCK, &trace).expect_err("the model does not allow this trace");
    assert!(divergence.to_string().contains(&format!("part 0 commits {ON_Z} although a transaction of this batch already did")), "{divergence}");
}
