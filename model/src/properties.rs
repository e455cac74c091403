//! What must hold. Safety properties are `always`; the three liveness properties are
//! `eventually`, checked as stateright can: on paths that end in a state where no action is
//! enabled. Every fault has a budget (`world::Budget`) and every other action is enabled only
//! while it makes progress, so every execution is finite and ends in such a state: that is
//! the fairness the model assumes (an enabled action is not postponed forever; a part that
//! keeps failing on lock conflicts does so at most `Budget::conflicts` times). The condition
//! of each is "nothing is enabled, and ...", so it can only be met at the end of a path,
//! never early by accident; a path that ends without it is a counterexample.

use stateright::Property;

use orderflow_common::events::EventType;
use orderflow_consumer::lifecycle::{Refusal, Status};

use crate::protocol::{below, OrderflowModel};
use crate::state::{Ev, State, StoredCommand, Subject};
use crate::world::Msg;

pub const NEVER_OVERSOLD: &str = "never oversold";
pub const STOCK_ADDS_UP: &str = "available + reserved + sold = stock, reserved and sold match the orders";
pub const APPLIED_AT_MOST_ONCE: &str = "an order is applied at most once";
pub const OFFSETS_BEHIND_DB: &str = "a committed offset never passes an effect not durable in the database";
pub const OFFSETS_NEVER_BACK: &str = "a committed offset never moves backwards";
pub const NO_EVENT_WITHOUT_CHANGE: &str = "no event for a change that rolled back";
pub const ONE_EVENT_PER_CHANGE: &str = "one event_id per change";
pub const RELEASED_AT_MOST_ONCE: &str = "a hold is released at most once";
pub const COMMANDS_WAIT_FOR_ORDERS: &str = "a command waits for its order (never refused unknown_order: every order arrives)";
pub const EVERY_ORDER_APPLIED: &str = "eventually every accepted order and command is applied";
pub const EVERY_CHANGE_PUBLISHED: &str = "eventually every committed change has its event published";
pub const EVERY_EXPIRED_RELEASED: &str = "eventually every expired hold is released";

pub fn all() -> Vec<Property<OrderflowModel>> {
    vec![
        Property::always(NEVER_OVERSOLD, |_, s: &State| s.db.inventory.iter().all(|row| row.available >= 0 && row.reserved >= 0 && row.sold >= 0)),
        Property::always(STOCK_ADDS_UP, stock_adds_up),
        Property::always(APPLIED_AT_MOST_ONCE, |_, s: &State| s.db.applied.values().all(|n| *n <= 1)),
        Property::always(OFFSETS_BEHIND_DB, offsets_behind_db),
        Property::always(OFFSETS_NEVER_BACK, |_, s: &State| s.regressed.is_none()),
        Property::always(NO_EVENT_WITHOUT_CHANGE, |_, s: &State| s.log.is_subset(&s.db.changes)),
        Property::always(ONE_EVENT_PER_CHANGE, one_event_per_change),
        Property::always(RELEASED_AT_MOST_ONCE, |_, s: &State| s.db.released.values().all(|n| *n <= 1)),
        Property::always(COMMANDS_WAIT_FOR_ORDERS, |_, s: &State| {
            s.db.commands.values().all(|c| *c != StoredCommand::Decided { refusal: Some(Refusal::UnknownOrder) })
        }),
        Property::eventually(EVERY_ORDER_APPLIED, |m, s| quiescent(m, s) && every_order_applied(m, s)),
        Property::eventually(EVERY_CHANGE_PUBLISHED, |m, s| quiescent(m, s) && s.db.changes.is_subset(&s.log)),
        Property::eventually(EVERY_EXPIRED_RELEASED, |m, s| quiescent(m, s) && s.db.due(&m.world, s.clock).is_empty()),
    ]
}

/// Which properties a check tests: all of them, or the safety (`always`) or liveness
/// (`eventually`) ones, for reporting each set's cost apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertySet {
    All,
    Safety,
    Liveness,
}

impl PropertySet {
    pub fn contains(self, property: &Property<OrderflowModel>) -> bool {
        let liveness = property.expectation == stateright::Expectation::Eventually;
        match self {
            Self::All => true,
            Self::Safety => !liveness,
            Self::Liveness => liveness,
        }
    }
}

/// The condition of a property, by name.
pub fn condition(name: &str) -> Option<fn(&OrderflowModel, &State) -> bool> {
    all().into_iter().find(|p| p.name == name).map(|p| p.condition)
}

/// No action is enabled: the end of a path.
pub fn quiescent(model: &OrderflowModel, state: &State) -> bool {
    model.enabled(state).is_empty()
}

/// Per product: available + reserved + sold is the initial stock (and available + reserved
/// is the total); reserved is the sum of the reserved orders' lines, sold that of the
/// confirmed ones. The second half catches a cart whose lines did not move together.
pub fn stock_adds_up(model: &OrderflowModel, state: &State) -> bool {
    let world = &model.world;
    state.db.inventory.iter().enumerate().all(|(p, row)| {
        let stock = world.products[p].1;
        let held = |status: Status| -> i64 {
            state
                .db
                .orders
                .iter()
                .filter(|(_, o)| o.status == status)
                .flat_map(|(order, _)| world.orders[usize::from(*order)].lines.iter())
                .filter(|(product, _)| *product == p)
                .map(|(_, q)| i64::from(*q))
                .sum()
        };
        row.available + row.reserved + row.sold == stock
            && row.available + row.reserved == row.total
            && row.reserved == held(Status::Reserved)
            && row.sold == held(Status::Confirmed)
    })
}

/// Every message below a partition's committed offset has its effect in the database: a
/// placement its order row, a command its row (decided, or parked waiting for its order).
pub fn offsets_behind_db(model: &OrderflowModel, state: &State) -> bool {
    state.committed.iter().enumerate().all(|(p, &offset)| {
        below(&model.world, p, offset).all(|msg| match msg {
            Msg::Place(order) => state.db.orders.contains_key(&order),
            Msg::Command(command) => state.db.commands.contains_key(&command),
        })
    })
}

/// An order's placement has one event id (reserved or rejected, never both), and a command's
/// decision one (confirmed, cancelled or refused).
pub fn one_event_per_change(_: &OrderflowModel, state: &State) -> bool {
    let placement = |kind: EventType| matches!(kind, EventType::Reserved | EventType::Rejected);
    let mut seen: std::collections::BTreeMap<(Subject, bool), EventType> = Default::default();
    state.db.changes.iter().chain(state.log.iter()).all(|Ev { subject, kind }| {
        let key = (*subject, placement(*kind));
        match seen.get(&key) {
            Some(first) => first == kind,
            None => {
                seen.insert(key, *kind);
                true
            }
        }
    })
}

fn every_order_applied(model: &OrderflowModel, state: &State) -> bool {
    model.world.partitions.iter().flatten().all(|msg| match msg {
        Msg::Place(order) => state.db.orders.contains_key(order),
        Msg::Command(command) => matches!(state.db.commands.get(command), Some(StoredCommand::Decided { .. })),
    })
}
