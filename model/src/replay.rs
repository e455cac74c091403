//! Trace validation (issue #14, part 3): the steps the real consumer recorded
//! (`orderflow_common::protocol_trace`), merged over every member, replayed through the
//! model's transition rules. A step the model does not allow is a `Divergence`.
//!
//! The rules are the model's, at the scale of a real run (UUIDs, any number of products):
//! each step is allowed only where the model enables its action, and after each step the
//! model's safety properties must hold: stock never below zero, available + reserved + sold
//! the initial stock, reserved and sold exactly the lines of reserved and confirmed orders,
//! an order applied once, a hold released once, a status change only as
//! `lifecycle::decide` allows it, offsets recorded or committed only past messages whose
//! effects committed and never backwards, every event published for a change a committed transaction made.
//!
//! A part may commit in several transactions (`reservation::Locking::Available`), each a
//! `part_committed` record with the same part index. Each must be what `split::go_ahead`
//! lets go ahead: whole components of the batch's steps not committed yet (a product with
//! every cart and command linked to it), never a step without an earlier or later one it is
//! linked to, and no step of the batch twice.

use std::collections::{BTreeMap, HashMap, HashSet};

use uuid::Uuid;

use orderflow_common::command::CommandKind;
use orderflow_common::events::{event_id, EventType};
use orderflow_common::protocol_trace::{Effect, Message, Position, Record, Step, StockMove};
use orderflow_consumer::lifecycle::{decide, Status};
use orderflow_consumer::split;

/// A real step the model does not allow, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step {index} (member {member}, seq {seq}): {what}\n  the step: {step}")]
pub struct Divergence {
    /// Position in the merged trace.
    pub index: usize,
    pub member: Uuid,
    pub seq: u64,
    pub what: String,
    /// The record as JSON.
    pub step: String,
}

/// What a valid trace did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub records: usize,
    pub members: usize,
    pub orders: usize,
    pub commands: usize,
    pub committed_transactions: usize,
    /// Transactions of a part after its first in the same batch: partial commits
    /// (`Locking::Available`) checked against `split::go_ahead`.
    pub partial_commits: usize,
    pub events_published: usize,
    /// Changes whose event was never published (liveness: empty at the end of a run that
    /// drained; a run cut short may leave some).
    pub unpublished: Vec<Uuid>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Row {
    available: i64,
    reserved: i64,
    sold: i64,
}

#[derive(Debug, Default)]
struct MemberState {
    assigned: HashSet<i32>,
    /// The batch in flight: its messages.
    batch: Option<Vec<(Position, Message)>>,
    /// Its steps (unique by id, in batch order), for the partial-commit rule.
    steps: Vec<BatchStep>,
    /// The part indexes that committed a transaction in this batch.
    parts: HashSet<usize>,
}

/// A step of the batch in flight: a placement (by order id) or a command (by command id),
/// the products it touches as `worker_pool::plan` links them (`reservation::Touches`), and
/// whether a transaction of this batch committed it.
#[derive(Debug)]
struct BatchStep {
    id: Uuid,
    touches: Vec<String>,
    done: bool,
}

#[derive(Debug, Default)]
struct Replay {
    initial: HashMap<String, i64>,
    stock: HashMap<String, Row>,
    /// Lines of every order seen in a poll.
    lines: HashMap<Uuid, Vec<(String, i64)>>,
    kinds: HashMap<Uuid, CommandKind>,
    orders: HashMap<Uuid, Status>,
    /// Commands: decided (true) or parked (false).
    commands: HashMap<Uuid, bool>,
    released: HashSet<Uuid>,
    changes: HashSet<Uuid>,
    published: HashSet<Uuid>,
    members: HashMap<Uuid, MemberState>,
    /// The group's committed offsets, by partition.
    committed: BTreeMap<i32, i64>,
    /// Every message polled, by position.
    polled: HashMap<Position, Message>,
    transactions: usize,
    partial_commits: usize,
}

/// Replays the records of every member of a run (each member's file as `parse` read it),
/// starting from `initial_stock` (product, units), and checks each step against the model.
pub fn validate(initial_stock: &[(&str, i64)], members: &[Vec<Record>]) -> Result<ReplayReport, Divergence> {
    let mut records: Vec<&Record> = members.iter().flatten().collect();
    records.sort_by_key(|r| (r.at_us, r.seq));
    let mut replay = Replay {
        initial: initial_stock.iter().map(|(p, q)| ((*p).to_owned(), *q)).collect(),
        stock: initial_stock.iter().map(|(p, q)| ((*p).to_owned(), Row { available: *q, ..Row::default() })).collect(),
        ..Replay::default()
    };
    for (index, record) in records.iter().enumerate() {
        replay.step(record).and_then(|()| replay.invariants()).map_err(|what| Divergence {
            index,
            member: record.member,
            seq: record.seq,
            what,
            step: serde_json::to_string(record).unwrap_or_default(),
        })?;
    }
    let mut unpublished: Vec<Uuid> = replay.changes.difference(&replay.published).copied().collect();
    unpublished.sort();
    Ok(ReplayReport {
        records: records.len(),
        members: members.len(),
        orders: replay.orders.len(),
        commands: replay.commands.len(),
        committed_transactions: replay.transactions,
        partial_commits: replay.partial_commits,
        events_published: replay.published.len(),
        unpublished,
    })
}

impl Replay {
    fn step(&mut self, record: &Record) -> Result<(), String> {
        let member = self.members.entry(record.member).or_default();
        match &record.step {
            Step::Started { .. } => {
                if !member.assigned.is_empty() || member.batch.is_some() {
                    return Err("a member started twice".into());
                }
            }
            Step::Assigned { partitions } => member.assigned.extend(partitions),
            Step::Revoked { partitions } => partitions.iter().for_each(|p| {
                member.assigned.remove(p);
            }),
            Step::Polled { messages } => {
                if member.batch.is_some() {
                    return Err("a batch polled while the previous one has not recorded its offsets".into());
                }
                if let Some((position, _)) = messages.iter().find(|(position, _)| !member.assigned.contains(&position.partition)) {
                    return Err(format!("polled partition {} which this member is not assigned", position.partition));
                }
                for (position, message) in messages {
                    match message {
                        Message::Order { order_id, lines } => {
                            self.lines.insert(*order_id, lines.clone());
                        }
                        Message::Command { command_id, command, .. } => {
                            let kind = CommandKind::parse(command).ok_or_else(|| format!("unknown command kind {command}"))?;
                            self.kinds.insert(*command_id, kind);
                        }
                        Message::Invalid => {}
                    }
                    self.polled.insert(*position, message.clone());
                }
                member.steps = batch_steps(messages, &self.orders, &self.lines);
                member.batch = Some(messages.clone());
            }
            Step::PartCommitted { part, effects, stock, outbox_events, events } => {
                if member.batch.is_none() {
                    return Err("a part committed outside a batch".into());
                }
                go_ahead(&mut member.steps, *part, effects)?;
                if !member.parts.insert(*part) {
                    self.partial_commits += 1;
                }
                self.transactions += 1;
                self.effects(effects)?;
                self.move_stock(stock)?;
                self.changes.extend(outbox_events);
                // The batch path's events: new changes, or rebuilt ones of changes committed before.
                if let Some(unknown) = events.iter().find(|e| !self.changes.contains(e)) {
                    return Err(format!("the part hands over event {unknown} for a change no committed transaction made"));
                }
            }
            Step::PartFailed { .. } => {
                if member.batch.is_none() {
                    return Err("a part failed outside a batch".into());
                }
            }
            Step::Swept { expired, stock, outbox_events, effects } => {
                self.transactions += 1;
                // An expiry a late (parked) command caused is in both lists: once is its change.
                let by_command: HashSet<Uuid> = effects.iter().filter(|e| e.command_id.is_some() && e.change == "expired").map(|e| e.order_id).collect();
                for order in expired.iter().filter(|o| !by_command.contains(o)) {
                    self.change(*order, None, "expired")?;
                }
                let effects: Vec<Effect> =
                    effects.iter().filter(|e| !(e.command_id.is_none() && e.change == "expired" && expired.contains(&e.order_id))).cloned().collect();
                self.effects(&effects)?;
                self.move_stock(stock)?;
                self.changes.extend(outbox_events);
            }
            Step::EventsPublished { event_ids, .. } => {
                if let Some(unknown) = event_ids.iter().find(|e| !self.changes.contains(e)) {
                    return Err(format!("event {unknown} published for a change no PartCommitted or Swept recorded (rolled back, or never made)"));
                }
                self.published.extend(event_ids);
            }
            Step::OffsetsRecorded { next } => {
                let member = self.members.get_mut(&record.member).expect("entered above");
                let batch = member.batch.take().ok_or("offsets recorded without a batch")?;
                member.steps.clear();
                member.parts.clear();
                for position in next {
                    if let Some((at, _)) =
                        batch.iter().find(|(at, message)| at.partition == position.partition && at.offset < position.offset && !durable(self, message))
                    {
                        return Err(format!("offsets recorded past P{}@{} whose effect is not committed", at.partition, at.offset));
                    }
                    let highest = batch.iter().filter(|(at, _)| at.partition == position.partition).map(|(at, _)| at.offset + 1).max();
                    if highest != Some(position.offset) {
                        return Err(format!("P{} recorded at {} but the batch ends at {highest:?}", position.partition, position.offset));
                    }
                }
            }
            Step::OffsetsCommitted { offsets, .. } => {
                for position in offsets {
                    if let Some((at, _)) =
                        self.polled.iter().find(|(at, message)| at.partition == position.partition && at.offset < position.offset && !durable(self, message))
                    {
                        return Err(format!("offset {} committed for P{} past P{}@{} whose effect is not committed", position.offset, position.partition, at.partition, at.offset));
                    }
                    // The model's "a committed offset never moves backwards" (the stale batch
                    // of issue #14 broke it).
                    if let Some(before) = self.committed.get(&position.partition).filter(|before| **before > position.offset) {
                        return Err(format!("P{}'s committed offset moves backwards, from {before} to {}", position.partition, position.offset));
                    }
                    self.committed.insert(position.partition, position.offset);
                }
            }
        }
        Ok(())
    }

    fn effects(&mut self, effects: &[Effect]) -> Result<(), String> {
        for effect in effects {
            self.change(effect.order_id, effect.command_id, &effect.change)?;
        }
        Ok(())
    }

    /// One effect, allowed only where the model's transition allows it.
    fn change(&mut self, order: Uuid, command: Option<Uuid>, change: &str) -> Result<(), String> {
        let stored = self.orders.get(&order).copied();
        match (command, change) {
            (None, "reserved" | "rejected") => {
                if stored.is_some() {
                    return Err(format!("order {order} applied a second time"));
                }
                self.orders.insert(order, if change == "reserved" { Status::Reserved } else { Status::Rejected });
                let kind = if change == "reserved" { EventType::Reserved } else { EventType::Rejected };
                self.changes.insert(event_id(order, kind));
            }
            (None, "already_applied") => {
                if stored.is_none() {
                    return Err(format!("order {order} found already applied, but no transaction applied it"));
                }
            }
            (None, "expired") => {
                self.release(order, stored)?;
                self.orders.insert(order, Status::Expired);
                self.changes.insert(event_id(order, EventType::Expired));
            }
            (Some(command), "parked") => {
                if self.commands.get(&command) == Some(&true) {
                    return Err(format!("command {command} parked after it was decided"));
                }
                if stored.is_some() {
                    return Err(format!("command {command} parked although its order {order} is stored"));
                }
                self.commands.insert(command, false);
            }
            (Some(command), "already_applied") => {
                if self.commands.get(&command) != Some(&true) {
                    return Err(format!("command {command} found decided, but no transaction decided it"));
                }
            }
            (Some(command), decision) => {
                if self.commands.get(&command) == Some(&true) {
                    return Err(format!("command {command} decided twice"));
                }
                let kind = *self.kinds.get(&command).ok_or_else(|| format!("command {command} decided but never polled"))?;
                let refused = match decision {
                    "confirmed" | "cancelled" => {
                        let expected = if kind == CommandKind::Confirm { "confirmed" } else { "cancelled" };
                        let status = stored.ok_or_else(|| format!("command {command} {decision} an order {order} that is not stored"))?;
                        // The transition rule (the deadline is not in the trace: taken as not passed).
                        let verdict = decide(kind, status, None, chrono::DateTime::UNIX_EPOCH);
                        if decision != expected || verdict.change.map(|c| c.status().as_str()) != Some(decision) {
                            return Err(format!("a {} made order {order} {decision} from {}", kind.as_str(), status.as_str()));
                        }
                        self.release(order, stored)?;
                        self.orders.insert(order, verdict.change.expect("checked").status());
                        false
                    }
                    // A late command: the hold expired by it, the command refused.
                    "expired" => {
                        self.release(order, stored)?;
                        self.orders.insert(order, Status::Expired);
                        self.changes.insert(event_id(order, EventType::Expired));
                        true
                    }
                    "refused" => {
                        if stored == Some(Status::Reserved) {
                            return Err(format!("command {command} refused although its order {order} is reserved"));
                        }
                        true
                    }
                    other => return Err(format!("unknown change {other}")),
                };
                self.commands.insert(command, true);
                let event = match (kind, refused) {
                    (CommandKind::Confirm, false) => EventType::Confirmed,
                    (CommandKind::Cancel, false) => EventType::Cancelled,
                    (CommandKind::Confirm, true) => EventType::ConfirmRefused,
                    (CommandKind::Cancel, true) => EventType::CancelRefused,
                };
                self.changes.insert(event_id(command, event));
            }
            (None, other) => return Err(format!("order {order}: change {other} without a command")),
        }
        Ok(())
    }

    /// A hold ends (confirm, cancel, expiry): only a reserved one, once.
    fn release(&mut self, order: Uuid, stored: Option<Status>) -> Result<(), String> {
        if stored != Some(Status::Reserved) {
            return Err(format!("hold {order} ended from {}", stored.map_or("nothing", Status::as_str)));
        }
        if !self.released.insert(order) {
            return Err(format!("hold {order} released twice"));
        }
        Ok(())
    }

    fn move_stock(&mut self, moves: &[StockMove]) -> Result<(), String> {
        for movement in moves {
            let row = self.stock.get_mut(&movement.product_id).ok_or_else(|| format!("stock of unknown product {}", movement.product_id))?;
            row.available += movement.available;
            row.reserved += movement.reserved;
            row.sold += movement.sold;
        }
        Ok(())
    }

    /// The model's stock properties after every step.
    fn invariants(&self) -> Result<(), String> {
        let mut held: HashMap<&str, (i64, i64)> = HashMap::new();
        for (order, status) in &self.orders {
            let Some(lines) = self.lines.get(order) else { continue };
            for (product, quantity) in lines {
                let entry = held.entry(product.as_str()).or_default();
                match status {
                    Status::Reserved => entry.0 += quantity,
                    Status::Confirmed => entry.1 += quantity,
                    _ => {}
                }
            }
        }
        for (product, row) in &self.stock {
            if row.available < 0 || row.reserved < 0 || row.sold < 0 {
                return Err(format!("{product} oversold: {row:?}"));
            }
            if row.available + row.reserved + row.sold != self.initial[product] {
                return Err(format!("{product}: available + reserved + sold = {} but the stock is {}", row.available + row.reserved + row.sold, self.initial[product]));
            }
            let (reserved, sold) = held.get(product.as_str()).copied().unwrap_or_default();
            if (row.reserved, row.sold) != (reserved, sold) {
                return Err(format!("{product}: reserved {} sold {}, but the orders hold {reserved} and sold {sold}", row.reserved, row.sold));
            }
        }
        Ok(())
    }
}

/// The steps of a batch as `worker_pool::unique` and `plan` see them: the first of each id;
/// a placement touches its lines' products, a command those of its order (in the batch, or
/// stored when the batch started: `locate`). A command whose order is neither is parked,
/// alone: it gets a product of its own. (`locate` runs just after the `polled` record, so
/// an order another member stores in between is located there but not here: the command is
/// then taken alone, which only ever checks less.)
fn batch_steps(messages: &[(Position, Message)], stored: &HashMap<Uuid, Status>, lines: &HashMap<Uuid, Vec<(String, i64)>>) -> Vec<BatchStep> {
    let in_batch: HashMap<Uuid, &Vec<(String, i64)>> = messages
        .iter()
        .filter_map(|(_, message)| match message {
            Message::Order { order_id, lines } => Some((*order_id, lines)),
            _ => None,
        })
        .collect();
    let products = |lines: &Vec<(String, i64)>| lines.iter().map(|(product, _)| product.clone()).collect::<Vec<_>>();
    let mut steps: Vec<BatchStep> = Vec::new();
    for (_, message) in messages {
        let (id, touches) = match message {
            Message::Order { order_id, lines } => (*order_id, products(lines)),
            Message::Command { command_id, order_id, .. } => {
                let touches = match (in_batch.get(order_id).copied(), stored.contains_key(order_id), lines.get(order_id)) {
                    (Some(lines), _, _) | (None, true, Some(lines)) => products(lines),
                    _ => vec![format!("parked command {command_id}")],
                };
                (*command_id, touches)
            }
            Message::Invalid => continue,
        };
        if !steps.iter().any(|step| step.id == id) {
            steps.push(BatchStep { id, touches, done: false });
        }
    }
    steps
}

/// One transaction of a part: the batch's steps it names in its effects (by order id, or
/// command id) must be exactly what `split::go_ahead` lets go ahead of the steps not
/// committed yet, when the products of the others are busy: whole components. Parked
/// commands a placement pulls in are not steps of the batch and do not count.
fn go_ahead(steps: &mut [BatchStep], part: usize, effects: &[Effect]) -> Result<(), String> {
    let named: HashSet<Uuid> = effects.iter().map(|effect| effect.command_id.unwrap_or(effect.order_id)).collect();
    if let Some(again) = steps.iter().find(|step| step.done && named.contains(&step.id)) {
        return Err(format!("part {part} commits {} although a transaction of this batch already did", again.id));
    }
    let left: Vec<usize> = (0..steps.len()).filter(|&i| !steps[i].done).collect();
    let busy: HashSet<&str> = left.iter().filter(|&&i| !named.contains(&steps[i].id)).flat_map(|&i| steps[i].touches.iter().map(String::as_str)).collect();
    let (now, later) = split::go_ahead(&left, |i| steps[i].touches.iter().map(String::as_str), |product| busy.contains(product));
    let cut: Vec<usize> = later.iter().copied().filter(|&i| named.contains(&steps[i].id)).collect();
    if !cut.is_empty() {
        let ids = |list: &[usize]| list.iter().map(|&i| steps[i].id.to_string()).collect::<Vec<_>>().join(", ");
        let linked: Vec<usize> = later.iter().copied().filter(|&i| !named.contains(&steps[i].id)).collect();
        return Err(format!(
            "part {part} commits {} without {}, linked to it through a product or a cart: a transaction commits whole components (split::go_ahead)",
            ids(&cut),
            ids(&linked)
        ));
    }
    for i in now {
        steps[i].done = true;
    }
    Ok(())
}

/// Whether a polled message's effect is in the database: its order stored, its command
/// decided or parked (an invalid message goes to the dead-letter topic, not the database).
fn durable(replay: &Replay, message: &Message) -> bool {
    match message {
        Message::Order { order_id, .. } => replay.orders.contains_key(order_id),
        Message::Command { command_id, .. } => replay.commands.contains_key(command_id),
        Message::Invalid => true,
    }
}
