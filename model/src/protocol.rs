//! The consumer's protocol as a stateright `Model`: the actions of the world and what each
//! does, with the consumer's own functions deciding (dedup and split: `worker_pool::unique`
//! and `plan`; a partial commit after a lock conflict: `split::go_ahead`; offsets:
//! `offsets::ProcessedOffsets` and `recordable`; the rest in `db.rs`).

use std::collections::{BTreeSet, HashMap, HashSet};

use stateright::{Model, Property};
use uuid::Uuid;

use orderflow_common::command::Inbound;
use orderflow_consumer::lifecycle::Step;
use orderflow_consumer::offsets::{self, ProcessedOffsets};
use orderflow_consumer::{split, worker_pool};

use crate::mutation::Mutation;
use crate::state::{Batch, Db, Member, Part, PartKind, Polled, State, StepRef};
use crate::world::{Msg, World};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Member m collects what it can fetch of partition p into its next batch.
    Poll(u8, u8),
    /// Member m starts its collected batch: drops revoked partitions' messages, dedupes,
    /// splits into parts.
    Start(u8),
    /// Member m's part i commits.
    CommitPart(u8, u8),
    /// Member m's part i fails on a NOWAIT conflict (it is retried).
    ConflictPart(u8, u8),
    /// Member m's part i takes its rows with SKIP LOCKED (`reservation::Locking::Available`)
    /// and finds the products of the mask (bit p: product p) held elsewhere, by the other
    /// member's transaction or an outside writer: the components `split::go_ahead` lets go
    /// ahead commit, the rest stays as the part's steps, retried. Enabled only where some
    /// component goes ahead (where none does, the attempt fails like `ConflictPart`).
    CommitPartial(u8, u8, u8),
    /// Member m publishes its batch's events (batch path).
    PublishBatch(u8),
    /// Member m records its finished batch's positions and commits offsets.
    Finish(u8),
    /// Member m is killed and restarted: memory lost, fetching from the committed offsets.
    Crash(u8),
    /// Partition p moves to the other member (the old owner's revoke commits and forgets).
    Rebalance(u8),
    /// Member m's fetch position of p goes back to the committed offset.
    Redeliver(u8, u8),
    /// The clock advances one second.
    Tick,
    /// An expiry sweep's transaction (any member: it holds no member state).
    SweepExpire,
    /// A sweep decides parked commands whose order is stored by now.
    SweepParked,
    /// The outbox relay publishes and deletes the outbox.
    Relay,
    /// Mutation `ExpiryWithoutLock`: member m's sweeper reads the due holds, no lock.
    SweepRead(u8),
    /// Mutation `ExpiryWithoutLock`: member m's sweeper expires what it read.
    SweepWrite(u8),
}

/// A step of a part, by index, with the products of it that go along (all of its lines,
/// except under `GoAheadPerLine`).
type Picked = (usize, Vec<u8>);

#[derive(Debug, Clone)]
pub struct OrderflowModel {
    pub world: World,
    pub mutation: Option<Mutation>,
    pub properties: crate::properties::PropertySet,
}

impl OrderflowModel {
    pub fn new(world: World, mutation: Option<Mutation>) -> Self {
        Self { world, mutation, properties: crate::properties::PropertySet::All }
    }

    fn is(&self, mutation: Mutation) -> bool {
        self.mutation == Some(mutation)
    }

    pub fn initial(&self) -> State {
        let partitions = self.world.partition_count();
        let members = usize::from(self.world.members);
        State {
            clock: 0,
            // Partition p starts with member p % members.
            owner: (0..partitions).map(|p| (p % members) as u8).collect(),
            generation: vec![0; partitions],
            committed: vec![0; partitions],
            members: (0..members).map(|_| self.fresh_member(&vec![0; partitions])).collect(),
            db: Db::new(&self.world),
            log: BTreeSet::new(),
            budget: self.world.budget,
            regressed: None,
        }
    }

    fn fresh_member(&self, committed: &[u8]) -> Member {
        Member { fetch: committed.to_vec(), next: Vec::new(), in_flight: None, book: vec![None; committed.len()], sweep_read: None }
    }

    /// The member's `ProcessedOffsets`, rebuilt from the state.
    fn book(member: &Member) -> ProcessedOffsets {
        let book = ProcessedOffsets::default();
        for (partition, next) in member.book.iter().enumerate() {
            if let Some(next) = next {
                book.record(partition as i32, i64::from(*next) - 1);
            }
        }
        book
    }

    fn store_book(member: &mut Member, book: &ProcessedOffsets) {
        member.book.iter_mut().for_each(|slot| *slot = None);
        for (partition, next) in book.pending(None) {
            member.book[partition as usize] = Some(next as u8);
        }
    }

    fn assigned(state: &State, member: u8) -> Vec<i32> {
        state.owner.iter().enumerate().filter(|(_, owner)| **owner == member).map(|(p, _)| p as i32).collect()
    }

    /// Hands `pairs` (partition, next offset) to the group coordinator.
    fn commit_offsets(state: &mut State, pairs: &[(i32, i64)]) {
        for &(partition, next) in pairs {
            let (partition, next) = (partition as usize, next as u8);
            let before = state.committed[partition];
            if next < before && state.regressed.is_none() {
                state.regressed = Some((partition as u8, before, next));
            }
            state.committed[partition] = next;
        }
    }

    /// The member's ticket for a partition: the assignment generation while it owns it.
    fn ticket(state: &State, member: u8, partition: i32) -> Option<offsets::Ticket> {
        let p = partition as usize;
        (state.owner[p] == member).then(|| u64::from(state.generation[p]))
    }

    /// The positions of a finished batch that may be recorded (`offsets::recordable`).
    fn recordable(&self, state: &State, member: u8, positions: &[Polled]) -> Vec<(i32, i64)> {
        let assigned = Self::assigned(state, member);
        let polled: Vec<(i32, i64, Option<offsets::Ticket>)> =
            positions.iter().map(|p| (i32::from(p.partition), i64::from(p.offset), Some(u64::from(p.generation)))).collect();
        offsets::recordable(&polled, &assigned, |partition| Self::ticket(state, member, partition))
    }

    /// Whether a collected message is still this member's when its batch starts
    /// (`Pipeline::drop_revoked`, `offsets::current`).
    fn still_owned(&self, state: &State, member: u8, polled: &Polled) -> bool {
        let partition = i32::from(polled.partition);
        let owned = state.owner[usize::from(polled.partition)] == member;
        if self.is(Mutation::StaleBatchOffsets) {
            return owned;
        }
        offsets::current(owned, Some(u64::from(polled.generation)), Self::ticket(state, member, partition))
    }

    /// `Pipeline::start` after `drop_revoked`: dedup (`worker_pool::unique`), locate the
    /// orders of commands that are not in the batch (in the database), split
    /// (`worker_pool::plan`).
    fn parts(&self, db: &Db, positions: &[Polled]) -> Vec<Part> {
        let messages: Vec<Inbound> = positions.iter().map(|p| self.world.inbound(self.world.message(usize::from(p.partition), usize::from(p.offset)))).collect();
        let unique;
        let items: Vec<worker_pool::Item<'_>> = if self.is(crate::Mutation::NoDedup) {
            messages.iter().map(worker_pool::Item::from).collect()
        } else {
            unique = worker_pool::unique(&messages);
            unique.0
        };
        let in_batch: HashSet<Uuid> = items.iter().filter_map(|i| if let worker_pool::Item::Place(o) = i { Some(o.order_id) } else { None }).collect();
        let mut located: HashMap<Uuid, Vec<String>> = HashMap::new();
        for item in &items {
            if let worker_pool::Item::Command(command) = item {
                let order = World::order_of_uuid(command.order_id);
                if !in_batch.contains(&command.order_id) && db.orders.contains_key(&order) {
                    located.insert(command.order_id, self.world.order_products(order));
                }
            }
        }
        // CartPartByPart: each line of a cart placed as its own order (same order_id), so
        // that the split may put them in different parts.
        let split_carts: Vec<Inbound>;
        let items: Vec<worker_pool::Item<'_>> = if self.is(crate::Mutation::CartPartByPart) {
            split_carts = items
                .iter()
                .flat_map(|item| match item {
                    worker_pool::Item::Place(order) => order
                        .lines()
                        .iter()
                        .map(|line| {
                            let mut one = (*order).clone();
                            one.lines = orderflow_common::order::Lines::One(line.clone());
                            Inbound::Order(one)
                        })
                        .collect::<Vec<_>>(),
                    worker_pool::Item::Command(command) => vec![Inbound::Command((*command).clone())],
                })
                .collect();
            split_carts.iter().map(worker_pool::Item::from).collect()
        } else {
            items
        };
        let (planned, parked) = worker_pool::plan(&items, &located, split::Layout::Balanced { parts: self.world.workers });
        let mut parts: Vec<Part> = planned
            .iter()
            .map(|part| {
                let steps = part
                    .steps
                    .iter()
                    .map(|step| match step {
                        Step::Place(order) => StepRef::Place(World::order_of_uuid(order.order_id)),
                        Step::Command { command, parked } => StepRef::Command { command: World::command_of_uuid(command.command_id), parked: *parked },
                    })
                    .collect();
                let mut products: Vec<u8> = part.products.iter().map(|p| self.world.product_index(p) as u8).collect();
                products.sort_unstable();
                let touches = part.touches.iter().map(|t| t.iter().map(|p| self.world.product_index(p) as u8).collect()).collect();
                Part { kind: PartKind::Apply, steps, touches, products, committed: false, published_early: false }
            })
            .collect();
        if !parked.is_empty() {
            let steps: Vec<StepRef> = parked.iter().map(|c| StepRef::Command { command: World::command_of_uuid(c.command_id), parked: false }).collect();
            let touches = vec![Vec::new(); steps.len()];
            parts.push(Part { kind: PartKind::Park, steps, touches, products: Vec::new(), committed: false, published_early: false });
        }
        parts
    }

    /// The part's steps split as a SKIP LOCKED attempt that found the products of `busy`
    /// held elsewhere splits them (`reservation::apply_with`, `split::go_ahead`): what goes
    /// ahead in this transaction, and what waits, each as a part of its own. With
    /// `GoAheadPerLine`, the same function is fed one item per line (nothing links a cart's
    /// lines), so a cart may be cut in two.
    pub fn go_ahead(&self, part: &Part, busy: u8) -> (Part, Part) {
        let name = |p: u8| self.world.product(usize::from(p));
        let is_busy = |product: &str| busy & (1 << self.world.product_index(product)) != 0;
        let (now, later): (Vec<Picked>, Vec<Picked>) = if self.is(Mutation::GoAheadPerLine) {
            let lines: Vec<(usize, u8)> = part.touches.iter().enumerate().flat_map(|(i, t)| t.iter().map(move |&p| (i, p))).collect();
            let (now, later) = split::go_ahead(&lines, |(_, p)| std::iter::once(name(p)), is_busy);
            let by_step = |lines: Vec<(usize, u8)>| {
                let mut steps: Vec<Picked> = Vec::new();
                for (i, p) in lines {
                    match steps.iter_mut().find(|(j, _)| *j == i) {
                        Some((_, products)) => products.push(p),
                        None => steps.push((i, vec![p])),
                    }
                }
                steps.sort_by_key(|(i, _)| *i);
                steps
            };
            (by_step(now), by_step(later))
        } else {
            let indices: Vec<usize> = (0..part.steps.len()).collect();
            let (now, later) = split::go_ahead(&indices, |i| part.touches[i].iter().map(|&p| name(p)), is_busy);
            let whole = |indices: Vec<usize>| indices.into_iter().map(|i| (i, part.touches[i].clone())).collect();
            (whole(now), whole(later))
        };
        let sub = |picked: Vec<Picked>| {
            let mut products: Vec<u8> = picked.iter().flat_map(|(_, t)| t.iter().copied()).collect();
            products.sort_unstable();
            products.dedup();
            let (steps, touches) = picked.into_iter().map(|(i, t)| (part.steps[i], t)).unzip();
            Part { kind: part.kind, steps, touches, products, committed: false, published_early: part.published_early }
        };
        (sub(now), sub(later))
    }

    /// With `CartPartByPart` (or `GoAheadPerLine`), a part holding one line of a cart places
    /// only that line.
    fn commit(&self, db: &mut Db, part: &Part, tick: u8) -> Vec<crate::state::Ev> {
        let rules = crate::db::Rules { dedup: !self.is(Mutation::NoDedup), park_unknown: !self.is(Mutation::CancelBeforeOrder) };
        if (self.is(Mutation::CartPartByPart) || self.is(Mutation::GoAheadPerLine)) && part.kind == PartKind::Apply {
            // The world's order with only this part's lines: placed as if it were all.
            let mut world = self.world.clone();
            for spec in &mut world.orders {
                spec.lines.retain(|(p, _)| part.products.contains(&(*p as u8)));
            }
            return db.commit_part(&world, part.kind, &part.steps, &part.products, tick, rules).batch_events;
        }
        db.commit_part(&self.world, part.kind, &part.steps, &part.products, tick, rules).batch_events
    }

    pub fn enabled(&self, state: &State) -> Vec<Action> {
        let mut actions = Vec::new();
        self.actions(state, &mut actions);
        actions
    }
}

impl Model for OrderflowModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial()]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        let world = &self.world;
        for m in 0..world.members {
            let member = &state.members[usize::from(m)];
            for p in 0..world.partition_count() as u8 {
                let fetchable = usize::from(member.fetch[usize::from(p)]) < world.partitions[usize::from(p)].len();
                if state.owner[usize::from(p)] == m && fetchable && member.next.len() < world.max_batch {
                    actions.push(Action::Poll(m, p));
                }
            }
            if member.in_flight.is_none() && !member.next.is_empty() {
                actions.push(Action::Start(m));
            }
            if let Some(batch) = &member.in_flight {
                for (i, part) in batch.parts.iter().enumerate() {
                    if !part.committed {
                        actions.push(Action::CommitPart(m, i as u8));
                        if state.budget.conflicts > 0 && part.kind == PartKind::Apply {
                            actions.push(Action::ConflictPart(m, i as u8));
                            // Every non-empty proper subset of the part's products held
                            // elsewhere (a part of one product can only fail whole).
                            let mask: u8 = part.products.iter().map(|p| 1 << p).sum();
                            if part.products.len() >= 2 {
                                for busy in (1..mask).filter(|b| b & !mask == 0) {
                                    if !self.go_ahead(part, busy).0.steps.is_empty() {
                                        actions.push(Action::CommitPartial(m, i as u8, busy));
                                    }
                                }
                            }
                        }
                    }
                }
                if batch.written() && !batch.published && !batch.events.is_empty() {
                    actions.push(Action::PublishBatch(m));
                }
                if batch.written() && (batch.published || batch.events.is_empty()) {
                    actions.push(Action::Finish(m));
                }
            }
            if state.budget.crashes > 0 {
                actions.push(Action::Crash(m));
            }
            for p in 0..world.partition_count() as u8 {
                if state.budget.redeliveries > 0 && state.owner[usize::from(p)] == m && member.fetch[usize::from(p)] != state.committed[usize::from(p)] {
                    actions.push(Action::Redeliver(m, p));
                }
            }
            if self.is(Mutation::ExpiryWithoutLock) {
                match &member.sweep_read {
                    None if !state.db.due(world, state.clock).is_empty() => actions.push(Action::SweepRead(m)),
                    Some(_) => actions.push(Action::SweepWrite(m)),
                    None => {}
                }
            }
        }
        if state.budget.rebalances > 0 && world.members > 1 {
            for p in 0..world.partition_count() as u8 {
                actions.push(Action::Rebalance(p));
            }
        }
        if state.clock < world.max_clock {
            actions.push(Action::Tick);
        }
        if !self.is(Mutation::ExpiryWithoutLock) && !state.db.due(world, state.clock).is_empty() {
            actions.push(Action::SweepExpire);
        }
        if !state.db.decidable_parked(world).is_empty() {
            actions.push(Action::SweepParked);
        }
        if !state.db.outbox.is_empty() {
            actions.push(Action::Relay);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        let world = &self.world;
        match action {
            Action::Poll(m, p) => {
                let generation = state.generation[usize::from(p)];
                let member = &mut state.members[usize::from(m)];
                while member.next.len() < world.max_batch && usize::from(member.fetch[usize::from(p)]) < world.partitions[usize::from(p)].len() {
                    member.next.push(Polled { partition: p, offset: member.fetch[usize::from(p)], generation });
                    member.fetch[usize::from(p)] += 1;
                }
            }
            Action::Start(m) => {
                let collected = std::mem::take(&mut state.members[usize::from(m)].next);
                let positions: Vec<Polled> = collected.into_iter().filter(|polled| self.still_owned(last, m, polled)).collect();
                if positions.is_empty() {
                    return Some(state);
                }
                let parts = self.parts(&state.db, &positions);
                if self.is(Mutation::OffsetsBeforeDb) {
                    let member = &mut state.members[usize::from(m)];
                    let book = Self::book(member);
                    for (partition, offset) in positions.iter().map(|p| (i32::from(p.partition), i64::from(p.offset))) {
                        book.record(partition, offset);
                    }
                    Self::store_book(member, &book);
                    let pairs = book.pending(Some(&Self::assigned(last, m)));
                    Self::commit_offsets(&mut state, &pairs);
                }
                state.members[usize::from(m)].in_flight = Some(Batch { positions, parts, events: BTreeSet::new(), published: false });
            }
            Action::CommitPart(m, i) => {
                let part = state.members[usize::from(m)].in_flight.as_ref()?.parts[usize::from(i)].clone();
                if self.is(Mutation::EventsBeforeCommit) && !part.published_early {
                    // The events of what the transaction is about to commit, sent first.
                    let mut scratch = state.db.clone();
                    let events = self.commit(&mut scratch, &part, state.clock);
                    state.log.extend(events);
                    state.log.extend(scratch.outbox.difference(&state.db.outbox).copied().collect::<Vec<_>>());
                    state.members[usize::from(m)].in_flight.as_mut()?.parts[usize::from(i)].published_early = true;
                    return Some(state);
                }
                let events = self.commit(&mut state.db, &part, state.clock);
                let batch = state.members[usize::from(m)].in_flight.as_mut()?;
                batch.parts[usize::from(i)].committed = true;
                batch.events.extend(events);
            }
            Action::ConflictPart(..) => {
                state.budget.conflicts -= 1;
            }
            Action::CommitPartial(m, i, busy) => {
                // A conflict met (`write_part` counts it): within the same budget.
                state.budget.conflicts -= 1;
                let part = state.members[usize::from(m)].in_flight.as_ref()?.parts[usize::from(i)].clone();
                let (now, later) = self.go_ahead(&part, busy);
                let events = self.commit(&mut state.db, &now, state.clock);
                let batch = state.members[usize::from(m)].in_flight.as_mut()?;
                let rest = &mut batch.parts[usize::from(i)];
                (rest.steps, rest.touches, rest.products) = (later.steps, later.touches, later.products);
                batch.events.extend(events);
            }
            Action::PublishBatch(m) => {
                let batch = state.members[usize::from(m)].in_flight.as_mut()?;
                batch.published = true;
                let events = batch.events.clone();
                state.log.extend(events);
            }
            Action::Finish(m) => {
                let batch = state.members[usize::from(m)].in_flight.take()?;
                if !self.is(Mutation::OffsetsBeforeDb) {
                    let recordable = if self.is(Mutation::StaleBatchOffsets) {
                        let assigned = Self::assigned(last, m);
                        batch.positions.iter().filter(|p| assigned.contains(&i32::from(p.partition))).map(|p| (i32::from(p.partition), i64::from(p.offset))).collect()
                    } else {
                        self.recordable(last, m, &batch.positions)
                    };
                    let member = &mut state.members[usize::from(m)];
                    let book = Self::book(member);
                    for (partition, offset) in recordable {
                        book.record(partition, offset);
                    }
                    Self::store_book(member, &book);
                    let pairs = book.pending(Some(&Self::assigned(last, m)));
                    Self::commit_offsets(&mut state, &pairs);
                }
            }
            Action::Crash(m) => {
                state.budget.crashes -= 1;
                let committed = state.committed.clone();
                state.members[usize::from(m)] = self.fresh_member(&committed);
                // The new process joins the group and gets its partitions back: a new
                // assignment.
                for p in 0..world.partition_count() {
                    if state.owner[p] == m {
                        state.generation[p] += 1;
                    }
                }
            }
            Action::Rebalance(p) => {
                state.budget.rebalances -= 1;
                let (from, to) = (state.owner[usize::from(p)], (state.owner[usize::from(p)] + 1) % world.members);
                // context.rs, revoke: commit what is recorded for the partition, then forget it.
                let member = &mut state.members[usize::from(from)];
                let book = Self::book(member);
                let pairs = book.pending(Some(&[i32::from(p)]));
                book.forget(&[i32::from(p)]);
                Self::store_book(member, &book);
                Self::commit_offsets(&mut state, &pairs);
                state.owner[usize::from(p)] = to;
                state.generation[usize::from(p)] += 1;
                let committed = state.committed[usize::from(p)];
                state.members[usize::from(to)].fetch[usize::from(p)] = committed;
            }
            Action::Redeliver(m, p) => {
                state.budget.redeliveries -= 1;
                state.members[usize::from(m)].fetch[usize::from(p)] = state.committed[usize::from(p)];
            }
            Action::Tick => state.clock += 1,
            Action::SweepExpire => state.db.expire(world, state.clock, None),
            Action::SweepParked => {
                let commands = state.db.decidable_parked(world);
                let steps: Vec<StepRef> = commands.iter().map(|&command| StepRef::Command { command, parked: true }).collect();
                let mut products: Vec<u8> = commands
                    .iter()
                    .flat_map(|&c| world.orders[usize::from(world.commands[usize::from(c)].order)].lines.iter().map(|&(p, _)| p as u8))
                    .collect();
                products.sort_unstable();
                products.dedup();
                // decide_parked goes through reservation::apply: its events go to the outbox.
                state.db.commit_part(world, PartKind::Apply, &steps, &products, state.clock, crate::db::Rules::PROTOCOL);
            }
            Action::Relay => {
                let events = state.db.relay();
                state.log.extend(events);
            }
            Action::SweepRead(m) => {
                let due = state.db.due(world, state.clock);
                state.members[usize::from(m)].sweep_read = Some(due);
            }
            Action::SweepWrite(m) => {
                let read = state.members[usize::from(m)].sweep_read.take()?;
                state.db.expire(world, state.clock, Some(&read));
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        crate::properties::all().into_iter().filter(|p| self.properties.contains(p)).collect()
    }
}

/// Messages of a partition below an offset (for the properties).
pub fn below(world: &World, partition: usize, offset: u8) -> impl Iterator<Item = Msg> + '_ {
    world.partitions[partition].iter().take(usize::from(offset)).copied()
}
