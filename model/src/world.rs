//! The world the model runs in: products and their stock, the orders and commands in
//! `orders-placed` (per partition, in offset order), the bounds of the faults, and the real
//! consumer types (`ValidOrder`, `ValidCommand`) the model hands to the consumer's functions.
//!
//! Ids are small integers in the model's state (readable traces, small states) and UUIDs
//! built from them when the real functions are called: order n is `Uuid::from_u128(n)`,
//! command n is `Uuid::from_u128(COMMAND_BASE + n)`.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use orderflow_common::command::{CommandKind, Inbound, ValidCommand};
use orderflow_common::order::{Line, Lines, ValidOrder};

/// Offset of command ids in UUID space, so that an order and a command never share an id.
pub const COMMAND_BASE: u128 = 0x1000;

/// One message of `orders-placed`, by the ids of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Msg {
    Place(u8),
    Command(u8),
}

/// An order of the world: its lines (product index, quantity) and its own hold, if any.
#[derive(Debug, Clone)]
pub struct OrderSpec {
    pub lines: Vec<(usize, i32)>,
    pub hold_seconds: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    pub order: u8,
    pub kind: CommandKind,
}

/// How many times each fault may happen in one execution. Every action that is not progress
/// has a budget: every execution is finite, which is what lets the checker test the
/// `eventually` properties on the states where nothing is enabled any more (see
/// `properties.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    /// A member killed at any point and restarted (it loses all it had in memory).
    pub crashes: u8,
    /// A partition moving to the other member.
    pub rebalances: u8,
    /// A part's (or sweep's) transaction failing on a NOWAIT lock conflict, to be retried.
    pub conflicts: u8,
    /// A member's fetch position going back to the group's committed offset.
    pub redeliveries: u8,
}

#[derive(Debug, Clone)]
pub struct World {
    /// Product name and its initial stock.
    pub products: Vec<(&'static str, i64)>,
    /// Order n is `orders[n]`.
    pub orders: Vec<OrderSpec>,
    /// Command n is `commands[n]`.
    pub commands: Vec<CommandSpec>,
    /// The messages of each partition, in offset order.
    pub partitions: Vec<Vec<Msg>>,
    /// Consumer members in the group.
    pub members: u8,
    /// Most messages one batch collects.
    pub max_batch: usize,
    /// Workers per consumer: the parts a batch splits into at most.
    pub workers: usize,
    /// RESERVATION_TTL_SECONDS of the consumers.
    pub default_hold_seconds: u32,
    /// The logical clock runs from 0 to this (one second per tick).
    pub max_clock: u8,
    pub budget: Budget,
}

impl World {
    /// The world of issue #14: two partitions; a placement and its duplicate from a producer
    /// retry and a confirm that may come after the hold's deadline; a cancel read before its
    /// order; a cart over both products whose lines other batches put in different parts.
    /// One unit of each product, so orders compete.
    pub fn issue_14(budget: Budget) -> Self {
        Self {
            products: vec![("X", 1), ("Y", 1)],
            orders: vec![
                OrderSpec { lines: vec![(0, 1)], hold_seconds: Some(1) },
                OrderSpec { lines: vec![(1, 1)], hold_seconds: None },
                OrderSpec { lines: vec![(0, 1), (1, 1)], hold_seconds: None },
            ],
            commands: vec![CommandSpec { order: 0, kind: CommandKind::Confirm }, CommandSpec { order: 1, kind: CommandKind::Cancel }],
            partitions: vec![
                vec![Msg::Place(0), Msg::Place(0), Msg::Command(0)],
                vec![Msg::Command(1), Msg::Place(1), Msg::Place(2)],
            ],
            members: 2,
            max_batch: 2,
            workers: 2,
            default_hold_seconds: 2,
            max_clock: 2,
            budget,
        }
    }

    /// The same messages with a clock that does not move: no hold ends on its own. Less to
    /// explore, for the suite's bounded check of crashes and rebalances in a debug build.
    pub fn small(budget: Budget) -> Self {
        Self { max_clock: 0, ..Self::issue_14(budget) }
    }

    /// A world where a part holds several components, so that a SKIP LOCKED attempt can
    /// commit some of them and leave the rest (`reservation::Locking::Available`): one worker
    /// per consumer (a batch is one part), P0 with a placement of X, one of Y and a confirm
    /// and a cancel of them, P1 a cart over X and Y. The issue #14 world never has two
    /// components in a part (2 workers, batches of 2), so there a partial commit can only
    /// fail whole. The clock does not move.
    pub fn contended(budget: Budget) -> Self {
        Self {
            products: vec![("X", 1), ("Y", 1)],
            orders: vec![
                OrderSpec { lines: vec![(0, 1)], hold_seconds: None },
                OrderSpec { lines: vec![(1, 1)], hold_seconds: None },
                OrderSpec { lines: vec![(0, 1), (1, 1)], hold_seconds: None },
            ],
            commands: vec![CommandSpec { order: 0, kind: CommandKind::Confirm }, CommandSpec { order: 1, kind: CommandKind::Cancel }],
            partitions: vec![vec![Msg::Place(0), Msg::Place(1), Msg::Command(0), Msg::Command(1)], vec![Msg::Place(2)]],
            members: 2,
            max_batch: 2,
            workers: 1,
            default_hold_seconds: 2,
            max_clock: 0,
            budget,
        }
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    pub fn message(&self, partition: usize, offset: usize) -> Msg {
        self.partitions[partition][offset]
    }

    pub fn product(&self, index: usize) -> &'static str {
        self.products[index].0
    }

    pub fn product_index(&self, name: &str) -> usize {
        self.products.iter().position(|(p, _)| *p == name).expect("a product of the world")
    }

    pub fn order_uuid(id: u8) -> Uuid {
        Uuid::from_u128(u128::from(id) + 1)
    }

    pub fn command_uuid(id: u8) -> Uuid {
        Uuid::from_u128(COMMAND_BASE + u128::from(id))
    }

    pub fn order_of_uuid(id: Uuid) -> u8 {
        (id.as_u128() - 1) as u8
    }

    pub fn command_of_uuid(id: Uuid) -> u8 {
        (id.as_u128() - COMMAND_BASE) as u8
    }

    pub fn customer(order: u8) -> String {
        format!("C{order}")
    }

    /// The clock tick as the database time of a transaction.
    pub fn time(tick: u8) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + i64::from(tick), 0).expect("in range")
    }

    /// A database time back as a tick (deadlines are whole seconds past the base).
    pub fn tick(at: DateTime<Utc>) -> u16 {
        (at.timestamp() - 1_800_000_000) as u16
    }

    pub fn valid_order(&self, id: u8) -> ValidOrder {
        let spec = &self.orders[usize::from(id)];
        let lines: Vec<Line> =
            spec.lines.iter().map(|&(product, quantity)| Line { product_id: self.product(product).to_owned(), quantity, amount_cents: 100 }).collect();
        ValidOrder {
            order_id: Self::order_uuid(id),
            customer_id: Self::customer(id),
            lines: if lines.len() == 1 { Lines::One(lines[0].clone()) } else { Lines::Cart(lines) },
            placed_at: Self::time(0),
            hold_seconds: spec.hold_seconds,
        }
    }

    pub fn valid_command(&self, id: u8) -> ValidCommand {
        let spec = self.commands[usize::from(id)];
        ValidCommand {
            kind: spec.kind,
            command_id: Self::command_uuid(id),
            order_id: Self::order_uuid(spec.order),
            customer_id: Self::customer(spec.order),
            issued_at: Self::time(0),
        }
    }

    pub fn inbound(&self, msg: Msg) -> Inbound {
        match msg {
            Msg::Place(order) => Inbound::Order(self.valid_order(order)),
            Msg::Command(command) => Inbound::Command(self.valid_command(command)),
        }
    }

    /// Product names of an order's lines.
    pub fn order_products(&self, order: u8) -> Vec<String> {
        self.orders[usize::from(order)].lines.iter().map(|&(p, _)| self.product(p).to_owned()).collect()
    }
}
