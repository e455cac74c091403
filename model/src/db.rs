//! The model's transactions, each one atomic step on `Db`. The decisions are the consumer's
//! own functions (`lifecycle::Ledger::apply`, which calls `allocation::allocate_one`;
//! `lifecycle::decide`; `expiry::expirable` and `due_products`; the event builders of
//! `events`); what is written around them mirrors `reservation::apply`, `reservation::park`
//! and `expiry::Sweeper`, which do it in SQL.

use std::collections::{BTreeSet, HashMap};

use orderflow_common::events::EventType;
use orderflow_consumer::events::{self, CommandOutcome};
use orderflow_consumer::expiry;
use orderflow_consumer::lifecycle::{Change, Hold, HeldLine, Ledger, Outcome, Status, Step};

use crate::state::{Db, Ev, PartKind, Row, StepRef, StoredCommand, StoredOrder, Subject};
use crate::world::World;

/// How a transaction follows the protocol: both true, except under the mutations `NoDedup`
/// (`dedup` false: a stored placement is applied again) and `CancelBeforeOrder`
/// (`park_unknown` false: a command whose order is unknown is decided at once).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub dedup: bool,
    pub park_unknown: bool,
}

impl Rules {
    pub const PROTOCOL: Self = Self { dedup: true, park_unknown: true };
}

/// What a committed transaction leaves for the batch loop: the events it must publish
/// before the batch's offsets move (changes in the outbox are the relay's).
#[derive(Debug, Default)]
pub struct Committed {
    pub batch_events: Vec<Ev>,
}

impl Db {
    pub fn new(world: &World) -> Self {
        let inventory = world.products.iter().map(|&(_, stock)| Row { available: stock, reserved: 0, total: stock, sold: 0 }).collect();
        Self { inventory, ..Self::default() }
    }

    /// A stored order as the transaction reads it (`reservation::Stored`).
    pub fn hold(&self, world: &World, order: u8) -> Option<Hold> {
        let stored = self.orders.get(&order)?;
        Some(Hold {
            customer_id: World::customer(order),
            lines: world.orders[usize::from(order)]
                .lines
                .iter()
                .map(|&(p, quantity)| HeldLine { product_id: world.product(p).to_owned(), quantity })
                .collect(),
            status: stored.status,
            expires_at: stored.expires_at.map(|tick| World::time(0) + chrono::Duration::seconds(i64::from(tick))),
        })
    }

    fn release(&mut self, order: u8) {
        *self.released.entry(order).or_default() += 1;
    }

    fn move_stock(&mut self, world: &World, deltas: &HashMap<String, orderflow_consumer::lifecycle::StockDelta>) {
        for (product, delta) in deltas {
            let row = &mut self.inventory[world.product_index(product)];
            row.available += delta.available;
            row.reserved += delta.reserved;
            row.total += delta.total;
            row.sold += delta.sold;
        }
    }

    /// A change committed: in the change log, and in the outbox if its event goes there.
    fn changed(&mut self, ev: Ev, outbox: bool, batch: &mut Vec<Ev>) {
        self.changes.insert(ev);
        if outbox {
            self.outbox.insert(ev);
        } else {
            batch.push(ev);
        }
    }

    /// `reservation::apply` for a part (or, with `PartKind::Park`, `reservation::park`) at
    /// clock `tick`.
    pub fn commit_part(&mut self, world: &World, kind: PartKind, steps: &[StepRef], products: &[u8], tick: u8, rules: Rules) -> Committed {
        match kind {
            PartKind::Apply => self.apply(world, steps, products, tick, rules),
            PartKind::Park => self.park(world, steps, rules.park_unknown),
        }
    }

    fn apply(&mut self, world: &World, steps: &[StepRef], products: &[u8], tick: u8, rules: Rules) -> Committed {
        let Rules { dedup, park_unknown } = rules;
        let now = World::time(tick);
        let mut committed = Committed::default();
        let orders: Vec<_> = (0..world.orders.len() as u8).map(|o| world.valid_order(o)).collect();
        let commands: Vec<_> = (0..world.commands.len() as u8).map(|c| world.valid_command(c)).collect();
        let own: BTreeSet<u8> = steps.iter().filter_map(|s| if let StepRef::Command { command, .. } = s { Some(*command) } else { None }).collect();
        // As reservation::apply: a stored placement is a redelivery (its event rebuilt from
        // the row), a decided command too; a placement pulls its parked commands in after it.
        let mut apply: Vec<Step<'_>> = Vec::new();
        for step in steps {
            match *step {
                StepRef::Place(order) => {
                    if dedup && self.orders.contains_key(&order) {
                        let hold = self.hold(world, order).expect("stored");
                        let reason = (hold.status == Status::Rejected).then_some("rejected");
                        committed.batch_events.push(ev_of(&events::placed(World::order_uuid(order), &hold, reason, now)));
                    } else {
                        apply.push(Step::Place(&orders[usize::from(order)]));
                    }
                    for (&command, stored) in &self.commands {
                        if *stored == StoredCommand::Pending && world.commands[usize::from(command)].order == order && !own.contains(&command) {
                            apply.push(Step::Command { command: &commands[usize::from(command)], parked: true });
                        }
                    }
                }
                StepRef::Command { command, parked } => match self.commands.get(&command) {
                    Some(StoredCommand::Decided { refusal }) => committed.batch_events.push(self.decided_event(world, command, *refusal, now)),
                    // Parked by an earlier delivery: decided with its event in the outbox.
                    Some(StoredCommand::Pending) => apply.push(Step::Command { command: &commands[usize::from(command)], parked: true }),
                    None => apply.push(Step::Command { command: &commands[usize::from(command)], parked }),
                },
            }
        }
        // FIND_ORDERS: the stored orders the steps name.
        let mut existing = HashMap::new();
        for step in &apply {
            let order = match step {
                Step::Place(order) => World::order_of_uuid(order.order_id),
                Step::Command { command, .. } => World::order_of_uuid(command.order_id),
            };
            if let Some(hold) = self.hold(world, order) {
                existing.insert(World::order_uuid(order), hold);
            }
        }
        let available: HashMap<String, i64> =
            products.iter().map(|&p| (world.product(usize::from(p)).to_owned(), self.inventory[usize::from(p)].available)).collect();
        let mut ledger = Ledger::new(available, existing);
        let outcomes = ledger.apply(&apply, now, world.default_hold_seconds);
        for (step, outcome) in apply.iter().zip(&outcomes) {
            match (step, outcome) {
                (Step::Place(order), Outcome::Placed { order_id, decision, expires_at, .. }) => {
                    let id = World::order_of_uuid(*order_id);
                    let status = ledger.orders[order_id].status;
                    self.orders.insert(id, StoredOrder { status, expires_at: expires_at.map(World::tick) });
                    *self.applied.entry(id).or_default() += 1;
                    let event = events::placed(order.order_id, &ledger.orders[order_id], decision.reason(), now);
                    self.changed(ev_of(&event), false, &mut committed.batch_events);
                }
                (Step::Command { command, parked }, Outcome::Decided { order_id, verdict, .. }) => {
                    let (c, o) = (World::command_of_uuid(command.command_id), World::order_of_uuid(*order_id));
                    let hold = &ledger.orders[order_id];
                    if let Some(change) = verdict.change {
                        self.orders.get_mut(&o).expect("a decided command's order is stored or placed here").status = change.status();
                        self.release(o);
                        if change == Change::Expire {
                            self.changed(ev_of(&events::expired(*order_id, hold, now)), true, &mut committed.batch_events);
                        }
                    }
                    self.commands.insert(c, StoredCommand::Decided { refusal: verdict.refusal });
                    let event = events::decided(command.command_id, command.kind, *order_id, &command.customer_id, Some(hold), CommandOutcome::of(verdict.refusal), now);
                    self.changed(ev_of(&event), *parked, &mut committed.batch_events);
                }
                (Step::Command { command, .. }, Outcome::Unknown { .. }) => {
                    let c = World::command_of_uuid(command.command_id);
                    self.unknown_command(world, c, park_unknown, &mut committed);
                }
                (step, outcome) => unreachable!("the ledger answers each step in kind: {step:?} -> {outcome:?}"),
            }
        }
        self.move_stock(world, &ledger.deltas);
        committed
    }

    /// A command whose order is not stored: parked (`pending`), or with `CancelBeforeOrder`
    /// decided at once as if its order would never come.
    fn unknown_command(&mut self, world: &World, command: u8, park_unknown: bool, committed: &mut Committed) {
        if park_unknown {
            self.commands.entry(command).or_insert(StoredCommand::Pending);
            return;
        }
        let refusal = Some(orderflow_consumer::lifecycle::Refusal::UnknownOrder);
        self.commands.insert(command, StoredCommand::Decided { refusal });
        let event = self.decided_event(world, command, refusal, World::time(0));
        self.changed(event, false, &mut committed.batch_events);
    }

    fn park(&mut self, world: &World, steps: &[StepRef], park_unknown: bool) -> Committed {
        let mut committed = Committed::default();
        for step in steps {
            let StepRef::Command { command, .. } = *step else { unreachable!("only commands are parked") };
            match self.commands.get(&command) {
                Some(StoredCommand::Decided { refusal }) => {
                    let event = self.decided_event(world, command, *refusal, World::time(0));
                    committed.batch_events.push(event);
                }
                Some(StoredCommand::Pending) => {}
                None => self.unknown_command(world, command, park_unknown, &mut committed),
            }
        }
        committed
    }

    /// `reservation::redelivered_command_event`: the event of a decided command, rebuilt.
    fn decided_event(&self, world: &World, command: u8, refusal: Option<orderflow_consumer::lifecycle::Refusal>, now: chrono::DateTime<chrono::Utc>) -> Ev {
        let valid = world.valid_command(command);
        let hold = self.hold(world, world.commands[usize::from(command)].order);
        ev_of(&events::decided(valid.command_id, valid.kind, valid.order_id, &valid.customer_id, hold.as_ref(), CommandOutcome::of(refusal), now))
    }

    /// Holds due at `tick`, in the order the sweeper would see them.
    pub fn due(&self, world: &World, tick: u8) -> Vec<u8> {
        let now = World::time(tick);
        self.orders.keys().copied().filter(|&o| self.hold(world, o).is_some_and(|h| expiry::expirable(&h, &all_products(&h), now))).collect()
    }

    /// `Sweeper::expire`: one transaction that locks the products of every due hold and
    /// expires those whose lines are all locked. With `recheck` false (`ExpiryWithoutLock`),
    /// `orders` were read earlier without the locks and are expired whatever they are now.
    pub fn expire(&mut self, world: &World, tick: u8, orders: Option<&[u8]>) {
        let now = World::time(tick);
        let holds: Vec<(u8, Hold)> = self.orders.keys().map(|&o| (o, self.hold(world, o).expect("stored"))).collect();
        let locked = expiry::due_products(holds.iter().map(|(_, h)| h), now);
        let mut deltas: HashMap<String, orderflow_consumer::lifecycle::StockDelta> = HashMap::new();
        let mut expired = Vec::new();
        for (order, hold) in &holds {
            let take = match orders {
                Some(read) => read.contains(order),
                None => expiry::expirable(hold, &locked, now),
            };
            if take {
                for (product, delta) in hold.stock(Change::Expire) {
                    *deltas.entry(product.to_owned()).or_default() += delta;
                }
                expired.push((*order, hold.clone()));
            }
        }
        for (order, hold) in expired {
            self.orders.get_mut(&order).expect("stored").status = Status::Expired;
            self.release(order);
            let mut sink = Vec::new();
            self.changed(ev_of(&events::expired(World::order_uuid(order), &hold, now)), true, &mut sink);
        }
        self.move_stock(world, &deltas);
    }

    /// Parked commands whose order is stored by now (`Sweeper::decide_parked`).
    pub fn decidable_parked(&self, world: &World) -> Vec<u8> {
        self.commands
            .iter()
            .filter(|(c, stored)| **stored == StoredCommand::Pending && self.orders.contains_key(&world.commands[usize::from(**c)].order))
            .map(|(c, _)| *c)
            .collect()
    }

    /// The outbox relay: publish every row, delete them.
    pub fn relay(&mut self) -> BTreeSet<Ev> {
        std::mem::take(&mut self.outbox)
    }
}

fn all_products(hold: &Hold) -> Vec<&str> {
    hold.lines.iter().map(|l| l.product_id.as_str()).collect()
}

/// The model's name of a real event.
pub fn ev_of(event: &orderflow_common::events::OrderEvent) -> Ev {
    let subject = match (event.kind, event.command_id) {
        (EventType::Reserved | EventType::Rejected | EventType::Expired, _) | (_, None) => Subject::Order(World::order_of_uuid(event.order_id)),
        (_, Some(command)) => Subject::Command(World::command_of_uuid(command)),
    };
    Ev { subject, kind: event.kind }
}
