//! Running the checker and printing what it found: one line per action, with the state that
//! action left behind, as far as it matters to the protocol.

use std::fmt::Write;
use std::time::{Duration, Instant};

use stateright::{Checker, HasDiscoveries, Model, Path};

use crate::properties::PropertySet;

use crate::mutation::Mutation;
use crate::protocol::{Action, OrderflowModel};
use crate::state::{PartKind, State, StepRef, StoredCommand};
use crate::world::{Msg, World};

/// What one exhaustive check did.
#[derive(Debug)]
pub struct CheckReport {
    pub unique_states: usize,
    pub states: usize,
    pub max_depth: usize,
    pub elapsed: Duration,
    /// Property name and the counterexample, readable.
    pub counterexamples: Vec<(&'static str, String)>,
}

/// Explores every state of `world` (breadth first, all threads) for the properties of `set`.
pub fn check(world: World, mutation: Option<Mutation>) -> CheckReport {
    check_set(world, mutation, PropertySet::All)
}

pub fn check_set(world: World, mutation: Option<Mutation>, set: PropertySet) -> CheckReport {
    let model = OrderflowModel { properties: set, ..OrderflowModel::new(world, mutation) };
    let printer = model.clone();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let mut builder = model.checker().threads(threads);
    if mutation.is_some() {
        // A broken protocol needs one counterexample, not the whole space.
        builder = builder.finish_when(HasDiscoveries::AnyFailures);
    }
    let checker = builder.spawn_bfs().join();
    let elapsed = started.elapsed();
    let mut counterexamples: Vec<(&'static str, String)> =
        checker.discoveries().into_iter().map(|(name, path)| (name, printer.explain(name, &path))).collect();
    counterexamples.sort_by_key(|(name, _)| *name);
    CheckReport { unique_states: checker.unique_state_count(), states: checker.state_count(), max_depth: checker.max_depth(), elapsed, counterexamples }
}

impl OrderflowModel {
    /// A counterexample, one line per action.
    pub fn explain(&self, property: &str, path: &Path<State, Action>) -> String {
        let mut out = String::new();
        let mutation = self.mutation.map_or_else(|| "none".to_owned(), |m| format!("{m:?}"));
        let _ = writeln!(out, "counterexample to \"{property}\" (mutation: {mutation})");
        let states = path.clone().into_states();
        let mut actions = path.clone().into_actions();
        // Up to the first state that breaks a safety property (the threads' search is not
        // strictly breadth first, so the path found may go on past it).
        let condition = crate::properties::condition(property);
        let liveness = property.starts_with("eventually");
        if let (Some(condition), false) = (condition, liveness) {
            if let Some(first) = states.iter().position(|s| !condition(self, s)) {
                actions.truncate(first);
            }
        }
        let _ = writeln!(out, "   0. start{}", self.describe(&states[0]));
        for (n, action) in actions.into_iter().enumerate() {
            let _ = writeln!(out, "{:4}. {}{}", n + 1, self.name(&states[n], action), self.describe(&states[n + 1]));
        }
        out
    }

    fn name(&self, before: &State, action: Action) -> String {
        match action {
            Action::Poll(m, p) => format!("m{m} polls P{p} from offset {}", before.members[usize::from(m)].fetch[usize::from(p)]),
            Action::Start(m) => format!("m{m} starts its batch {}", self.positions(before, m)),
            Action::CommitPart(m, i) | Action::ConflictPart(m, i) => {
                let part = before.members[usize::from(m)].in_flight.as_ref().map(|b| b.parts[usize::from(i)].clone());
                let what = part.map_or_else(String::new, |part| {
                    let steps: Vec<String> = part.steps.iter().map(|s| self.step(*s)).collect();
                    let kind = if part.kind == PartKind::Park { "park " } else { "" };
                    format!("{kind}[{}]", steps.join(", "))
                });
                if matches!(action, Action::CommitPart(..)) {
                    format!("m{m} commits part {i} {what}")
                } else {
                    format!("m{m} part {i} {what} fails on a NOWAIT conflict")
                }
            }
            Action::CommitPartial(m, i, busy) => {
                let Some(part) = before.members[usize::from(m)].in_flight.as_ref().map(|b| &b.parts[usize::from(i)]) else { return String::new() };
                let (now, later) = self.go_ahead(part, busy);
                let held: Vec<&str> = (0..self.world.products.len()).filter(|p| busy & (1 << p) != 0).map(|p| self.world.product(p)).collect();
                format!("m{m} part {i} takes the free rows ({} held elsewhere): commits {}, {} waits", held.join(", "), self.steps(&now), self.steps(&later))
            }
            Action::PublishBatch(m) => {
                let events: Vec<String> = before.members[usize::from(m)].in_flight.iter().flat_map(|b| b.events.iter().map(|e| e.to_string())).collect();
                format!("m{m} publishes its batch's events [{}]", events.join(", "))
            }
            Action::Finish(m) => format!("m{m} finishes its batch: records {} and commits offsets", self.positions(before, m)),
            Action::Crash(m) => format!("m{m} crashes and restarts"),
            Action::Rebalance(p) => {
                let from = before.owner[usize::from(p)];
                format!("rebalance: P{p} moves from m{from} to m{}", (from + 1) % self.world.members)
            }
            Action::Redeliver(m, p) => format!("m{m} refetches P{p} from the committed offset"),
            Action::Tick => format!("clock ticks to {}", before.clock + 1),
            Action::SweepExpire => "a sweep expires the due holds".to_owned(),
            Action::SweepParked => "a sweep decides parked commands".to_owned(),
            Action::Relay => "the outbox relay publishes".to_owned(),
            Action::SweepRead(m) => format!("m{m}'s sweeper reads the due holds (no lock)"),
            Action::SweepWrite(m) => format!("m{m}'s sweeper expires what it read"),
        }
    }

    fn positions(&self, state: &State, member: u8) -> String {
        let member = &state.members[usize::from(member)];
        let polled = member.in_flight.as_ref().map_or(&member.next, |b| &b.positions);
        let items: Vec<String> = polled
            .iter()
            .map(|p| format!("P{}@{}={} (gen {})", p.partition, p.offset, self.msg(self.world.message(usize::from(p.partition), usize::from(p.offset))), p.generation))
            .collect();
        format!("[{}]", items.join(", "))
    }

    fn msg(&self, msg: Msg) -> String {
        match msg {
            Msg::Place(o) => format!("place o{o}"),
            Msg::Command(c) => {
                let spec = self.world.commands[usize::from(c)];
                format!("{} k{c}(o{})", spec.kind.as_str(), spec.order)
            }
        }
    }

    /// A part's steps; a step cut to some of its lines (`GoAheadPerLine`) names them.
    fn steps(&self, part: &crate::state::Part) -> String {
        let steps: Vec<String> = part
            .steps
            .iter()
            .zip(&part.touches)
            .map(|(step, touches)| {
                let all = match *step {
                    StepRef::Place(o) => self.world.orders[usize::from(o)].lines.len(),
                    StepRef::Command { command, .. } => self.world.orders[usize::from(self.world.commands[usize::from(command)].order)].lines.len(),
                };
                if touches.len() < all {
                    let lines: Vec<&str> = touches.iter().map(|&p| self.world.product(usize::from(p))).collect();
                    format!("{} (line {} only)", self.step(*step), lines.join(", "))
                } else {
                    self.step(*step)
                }
            })
            .collect();
        format!("[{}]", steps.join(", "))
    }

    fn step(&self, step: StepRef) -> String {
        match step {
            StepRef::Place(o) => format!("place o{o}"),
            StepRef::Command { command, parked } => format!("{}{}", self.msg(Msg::Command(command)), if parked { " (parked)" } else { "" }),
        }
    }

    /// The state after an action, on the same line.
    pub fn describe(&self, state: &State) -> String {
        let stock: Vec<String> = state
            .db
            .inventory
            .iter()
            .enumerate()
            .map(|(p, r)| format!("{} a{} r{} s{}", self.world.product(p), r.available, r.reserved, r.sold))
            .collect();
        let orders: Vec<String> = state
            .db
            .orders
            .iter()
            .map(|(o, s)| format!("o{o} {}{}", s.status.as_str(), s.expires_at.map_or_else(String::new, |t| format!("@{t}"))))
            .collect();
        let commands: Vec<String> = state
            .db
            .commands
            .iter()
            .map(|(c, s)| match s {
                StoredCommand::Pending => format!("k{c} pending"),
                StoredCommand::Decided { refusal: None } => format!("k{c} applied"),
                StoredCommand::Decided { refusal: Some(r) } => format!("k{c} refused {}", r.as_str()),
            })
            .collect();
        let owners: Vec<String> = state.owner.iter().enumerate().map(|(p, m)| format!("P{p}:m{m}")).collect();
        format!(
            "\n        | t={} owners {} committed {:?} | {} | orders {{{}}} commands {{{}}} | outbox {} log {}",
            state.clock,
            owners.join(" "),
            state.committed,
            stock.join(", "),
            orders.join(", "),
            commands.join(", "),
            state.db.outbox.len(),
            state.log.len(),
        )
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} unique states ({} generated), max depth {}, {:.2?}", self.unique_states, self.states, self.max_depth, self.elapsed)?;
        for (name, trace) in &self.counterexamples {
            writeln!(f, "violated: {name}\n{trace}")?;
        }
        Ok(())
    }
}

/// Budgets for the suite's bounded check and for `scripts/model-check.sh`.
pub fn budget(crashes: u8, rebalances: u8, conflicts: u8, redeliveries: u8) -> crate::world::Budget {
    crate::world::Budget { crashes, rebalances, conflicts, redeliveries }
}
