//! The hold's lifecycle as pure rules: which command does what to an order in which state,
//! when a hold is due to expire, and the application of a part's placements and commands in
//! offset order to the locked stock. No I/O here: `reservation.rs` reads the state under the
//! product locks, calls these, and writes what they decided; the expiry sweeper and a model
//! checker (issue #14) use the same functions.
//!
//! ```text
//!             place                confirm (before expires_at)
//!   (none) ----------> reserved ---------------------------------> confirmed
//!      |                  |   \---- cancel (before expires_at) --> cancelled
//!      | no stock /       |
//!      | unknown product  +-------- expires_at passed: sweeper, or
//!      v                            a confirm/cancel arriving late --> expired
//!   rejected
//! ```
//! Every state but `reserved` is final. A command that finds a final state is refused and
//! changes nothing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use orderflow_common::command::{CommandKind, ValidCommand};
use orderflow_common::order::ValidOrder;

use crate::allocation::{allocate_one, Decision, RejectReason};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Reserved,
    Rejected,
    Confirmed,
    Cancelled,
    Expired,
}

impl Status {
    pub const ALL: [Self; 5] = [Self::Reserved, Self::Rejected, Self::Confirmed, Self::Cancelled, Self::Expired];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Rejected => "rejected",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// Why a command was refused. Stored in `order_commands.reason` and sent in the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The hold's deadline had passed (the order is expired, perhaps by this very command).
    HoldExpired,
    HoldCancelled,
    AlreadyConfirmed,
    OrderRejected,
    /// The order never arrived within PARKED_COMMAND_TTL_SECONDS.
    UnknownOrder,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HoldExpired => "hold_expired",
            Self::HoldCancelled => "hold_cancelled",
            Self::AlreadyConfirmed => "already_confirmed",
            Self::OrderRejected => "order_rejected",
            Self::UnknownOrder => "unknown_order",
        }
    }
}

/// A change of a reserved order, and where its units go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    /// reserved -> sold.
    Confirm,
    /// reserved -> available.
    Cancel,
    /// reserved -> available.
    Expire,
}

impl Change {
    pub fn status(self) -> Status {
        match self {
            Self::Confirm => Status::Confirmed,
            Self::Cancel => Status::Cancelled,
            Self::Expire => Status::Expired,
        }
    }

    /// `orders.reason` after the change: why the status is what it is.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Confirm => "confirm_command",
            Self::Cancel => "cancel_command",
            Self::Expire => "hold_expired",
        }
    }

    /// What the change does to the product's stock, for `quantity` units.
    pub fn stock(self, quantity: i32) -> StockDelta {
        let q = i64::from(quantity);
        match self {
            Self::Confirm => StockDelta { reserved: -q, total: -q, sold: q, ..StockDelta::default() },
            Self::Cancel | Self::Expire => StockDelta { available: q, reserved: -q, ..StockDelta::default() },
        }
    }
}

/// What a command does to an order: at most one change, and a refusal or not. A confirm that
/// comes after the deadline both expires the order (its units go back) and is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub change: Option<Change>,
    pub refusal: Option<Refusal>,
}

/// Whether a hold is past its deadline at `now`. A hold without a deadline (taken before
/// holds could end) never is.
pub fn is_due(status: Status, expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    status == Status::Reserved && expires_at.is_some_and(|deadline| deadline <= now)
}

/// The transition rule. `now` is the database time of the transaction that applies it.
///
/// A reserved order whose deadline has passed is expired, whether or not the sweeper got to
/// it yet: the outcome depends on the clock, never on how far behind the sweeper is. So a
/// late confirm expires it and is refused `hold_expired`, and a late cancel does the same
/// (the units go back either way; the customer learns the hold had already ended).
pub fn decide(kind: CommandKind, status: Status, expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Verdict {
    let refuse = |refusal| Verdict { change: None, refusal: Some(refusal) };
    match status {
        Status::Reserved if is_due(status, expires_at, now) => {
            Verdict { change: Some(Change::Expire), refusal: Some(Refusal::HoldExpired) }
        }
        Status::Reserved => Verdict {
            change: Some(match kind {
                CommandKind::Confirm => Change::Confirm,
                CommandKind::Cancel => Change::Cancel,
            }),
            refusal: None,
        },
        Status::Confirmed => refuse(Refusal::AlreadyConfirmed),
        Status::Cancelled => refuse(Refusal::HoldCancelled),
        Status::Expired => refuse(Refusal::HoldExpired),
        Status::Rejected => refuse(Refusal::OrderRejected),
    }
}

/// Changes of one product's row, summed over a transaction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StockDelta {
    pub available: i64,
    pub reserved: i64,
    pub total: i64,
    pub sold: i64,
}

impl std::ops::AddAssign for StockDelta {
    fn add_assign(&mut self, other: Self) {
        self.available += other.available;
        self.reserved += other.reserved;
        self.total += other.total;
        self.sold += other.sold;
    }
}

impl StockDelta {
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// A known order as the transaction sees it. A cart is held, confirmed, cancelled and
/// expired whole: every change moves every line's units together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub customer_id: String,
    /// One line for a single-line order, 2..50 for a cart, each product once.
    pub lines: Vec<HeldLine>,
    pub status: Status,
    pub expires_at: Option<DateTime<Utc>>,
}

/// One line of a held order: what a change moves on one product's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLine {
    pub product_id: String,
    pub quantity: i32,
}

impl Hold {
    /// A hold's lines from an order's.
    pub fn lines_of(order: &ValidOrder) -> Vec<HeldLine> {
        order.lines().iter().map(|line| HeldLine { product_id: line.product_id.clone(), quantity: line.quantity }).collect()
    }

    /// What `change` does to each product's stock: every line moves.
    pub fn stock(&self, change: Change) -> impl Iterator<Item = (&str, StockDelta)> + '_ {
        self.lines.iter().map(move |line| (line.product_id.as_str(), change.stock(line.quantity)))
    }
}

/// One thing to apply, in offset order.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    Place(&'a ValidOrder),
    /// `parked`: the command waited in `order_commands` for its order (no Kafka offset is
    /// behind this decision any more: its event goes through the outbox).
    Command { command: &'a ValidCommand, parked: bool },
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `short`: for a rejected cart, its lines that could not be served, with why.
    Placed { order_id: Uuid, decision: Decision, expires_at: Option<DateTime<Utc>>, short: Vec<(usize, RejectReason)> },
    Decided { command_id: Uuid, order_id: Uuid, parked: bool, verdict: Verdict },
    /// The command's order is not known to this transaction: it stays (or becomes) parked.
    Unknown { command_id: Uuid },
}

/// The locked stock and the known orders of one part, changed step by step.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Available units of every locked (known) product.
    pub available: HashMap<String, i64>,
    pub deltas: HashMap<String, StockDelta>,
    pub orders: HashMap<Uuid, Hold>,
}

impl Ledger {
    pub fn new(available: HashMap<String, i64>, orders: HashMap<Uuid, Hold>) -> Self {
        Self { available, deltas: HashMap::new(), orders }
    }

    /// Applies `steps` in order at `now`. Placements take stock first come, first served
    /// (`allocation::allocate_one`); a cancel or expiry gives it back to later placements of
    /// the same part; orders without a hold of their own hold for `default_hold_seconds`.
    pub fn apply(&mut self, steps: &[Step<'_>], now: DateTime<Utc>, default_hold_seconds: u32) -> Vec<Outcome> {
        steps.iter().map(|step| self.step(*step, now, default_hold_seconds)).collect()
    }

    fn step(&mut self, step: Step<'_>, now: DateTime<Utc>, default_hold_seconds: u32) -> Outcome {
        match step {
            Step::Place(order) => {
                // All or nothing over the order's lines (allocation.rs).
                let lines = order.lines().iter().map(|line| (line.product_id.as_str(), line.quantity));
                let (decision, short) = allocate_one(lines, &mut self.available);
                let expires_at = (decision == Decision::Reserved)
                    .then(|| now + chrono::Duration::seconds(i64::from(order.hold_seconds.unwrap_or(default_hold_seconds))));
                let status = match decision {
                    Decision::Reserved => {
                        for line in order.lines() {
                            let q = i64::from(line.quantity);
                            *self.deltas.entry(line.product_id.clone()).or_default() +=
                                StockDelta { available: -q, reserved: q, ..StockDelta::default() };
                        }
                        Status::Reserved
                    }
                    Decision::Rejected(_) => Status::Rejected,
                };
                let hold = Hold { customer_id: order.customer_id.clone(), lines: Hold::lines_of(order), status, expires_at };
                self.orders.insert(order.order_id, hold);
                Outcome::Placed { order_id: order.order_id, decision, expires_at, short }
            }
            Step::Command { command, parked } => {
                let Some(hold) = self.orders.get_mut(&command.order_id) else {
                    return Outcome::Unknown { command_id: command.command_id };
                };
                let verdict = decide(command.kind, hold.status, hold.expires_at, now);
                if let Some(change) = verdict.change {
                    // A cart's lines move together: every one of its products is locked
                    // in this part (worker_pool::plan puts them all in it).
                    hold.status = change.status();
                    for (product, delta) in hold.stock(change) {
                        *self.available.get_mut(product).expect("a held order's products are locked") += delta.available;
                        *self.deltas.entry(product.to_owned()).or_default() += delta;
                    }
                }
                Outcome::Decided { command_id: command.command_id, order_id: command.order_id, parked, verdict }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocation::RejectReason;
    use orderflow_common::order::{Line, Lines};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn every_state_and_command_has_the_documented_verdict() {
        use CommandKind::*;
        use Refusal::*;
        let (now, later) = (at(0), Some(at(10)));
        let cases = [
            (Confirm, Status::Reserved, later, Some(Change::Confirm), None),
            (Cancel, Status::Reserved, later, Some(Change::Cancel), None),
            (Confirm, Status::Reserved, Some(at(0)), Some(Change::Expire), Some(HoldExpired)),
            (Cancel, Status::Reserved, Some(at(-1)), Some(Change::Expire), Some(HoldExpired)),
            (Confirm, Status::Reserved, None, Some(Change::Confirm), None),
            (Cancel, Status::Reserved, None, Some(Change::Cancel), None),
            (Confirm, Status::Confirmed, later, None, Some(AlreadyConfirmed)),
            (Cancel, Status::Confirmed, later, None, Some(AlreadyConfirmed)),
            (Confirm, Status::Cancelled, later, None, Some(HoldCancelled)),
            (Cancel, Status::Cancelled, later, None, Some(HoldCancelled)),
            (Confirm, Status::Expired, later, None, Some(HoldExpired)),
            (Cancel, Status::Expired, later, None, Some(HoldExpired)),
            (Confirm, Status::Rejected, None, None, Some(OrderRejected)),
            (Cancel, Status::Rejected, None, None, Some(OrderRejected)),
        ];
        for (kind, status, expires_at, change, refusal) in cases {
            assert_eq!(decide(kind, status, expires_at, now), Verdict { change, refusal }, "{kind:?} on {status:?} ({expires_at:?})");
        }
    }

    #[test]
    fn only_reserved_holds_past_their_deadline_are_due() {
        for status in Status::ALL {
            assert_eq!(is_due(status, Some(at(-1)), at(0)), status == Status::Reserved, "{status:?}");
            assert!(!is_due(status, Some(at(1)), at(0)));
            assert!(!is_due(status, None, at(0)), "a hold without deadline never expires");
        }
        assert!(is_due(Status::Reserved, Some(at(0)), at(0)), "due at the deadline itself");
    }

    #[test]
    fn every_change_keeps_received_equal_to_available_reserved_and_sold() {
        for change in [Change::Confirm, Change::Cancel, Change::Expire] {
            let d = change.stock(3);
            assert_eq!(d.reserved, -3, "{change:?} ends a hold of 3");
            // available + reserved = total, and total + sold = received (unchanged).
            assert_eq!(d.available + d.reserved, d.total, "{change:?}");
            assert_eq!(d.total + d.sold, 0, "{change:?}");
            assert_eq!(Status::parse(change.status().as_str()), Some(change.status()));
        }
    }

    fn order(id: u128, product: &str, quantity: i32, hold: Option<u32>) -> ValidOrder {
        cart(id, &[(product, quantity)], hold)
    }

    fn cart(id: u128, lines: &[(&str, i32)], hold: Option<u32>) -> ValidOrder {
        let lines: Vec<Line> = lines.iter().map(|&(p, quantity)| Line { product_id: p.into(), quantity, amount_cents: 100 }).collect();
        ValidOrder {
            order_id: Uuid::from_u128(id),
            customer_id: "C".into(),
            lines: if lines.len() == 1 { Lines::One(lines[0].clone()) } else { Lines::Cart(lines) },
            placed_at: at(-5),
            hold_seconds: hold,
        }
    }

    fn command(id: u128, order: u128, kind: CommandKind) -> ValidCommand {
        ValidCommand { kind, command_id: Uuid::from_u128(id), order_id: Uuid::from_u128(order), customer_id: "C".into(), issued_at: at(-1) }
    }

    #[test]
    fn a_cancel_in_the_same_part_gives_its_units_to_later_orders() {
        let (a, b) = (order(1, "P", 1, Some(60)), order(2, "P", 1, None));
        let cancel_a = command(10, 1, CommandKind::Cancel);
        let mut ledger = Ledger::new([("P".to_owned(), 1)].into(), HashMap::new());
        let steps = [Step::Place(&a), Step::Command { command: &cancel_a, parked: false }, Step::Place(&b)];
        let outcomes = ledger.apply(&steps, at(0), 900);
        assert_eq!(outcomes[0], Outcome::Placed { order_id: a.order_id, decision: Decision::Reserved, expires_at: Some(at(60)), short: vec![] });
        assert!(matches!(outcomes[1], Outcome::Decided { verdict: Verdict { change: Some(Change::Cancel), refusal: None }, .. }));
        assert_eq!(outcomes[2], Outcome::Placed { order_id: b.order_id, decision: Decision::Reserved, expires_at: Some(at(900)), short: vec![] });
        assert_eq!(ledger.available["P"], 0);
        // a reserved then released, b reserved: one unit held in the end.
        assert_eq!(ledger.deltas["P"], StockDelta { available: -1, reserved: 1, total: 0, sold: 0 });
    }

    #[test]
    fn commands_on_known_orders_move_stock_and_unknown_orders_stay_parked() {
        let held = |status, expires_at| Hold {
            customer_id: "C".into(),
            lines: vec![HeldLine { product_id: "P".into(), quantity: 2 }],
            status,
            expires_at,
        };
        let orders: HashMap<Uuid, Hold> = [
            (Uuid::from_u128(1), held(Status::Reserved, Some(at(5)))),
            (Uuid::from_u128(2), held(Status::Reserved, Some(at(-5)))),
            (Uuid::from_u128(3), held(Status::Rejected, None)),
        ]
        .into();
        let mut ledger = Ledger::new([("P".to_owned(), 0)].into(), orders);
        let (confirm, late, second, rejected, unknown) = (
            command(10, 1, CommandKind::Confirm),
            command(11, 2, CommandKind::Confirm),
            command(12, 1, CommandKind::Cancel),
            command(13, 3, CommandKind::Confirm),
            command(14, 99, CommandKind::Cancel),
        );
        let steps: Vec<Step<'_>> =
            [&confirm, &late, &second, &rejected, &unknown].into_iter().map(|command| Step::Command { command, parked: false }).collect();
        let outcomes = ledger.apply(&steps, at(0), 900);
        let verdicts: Vec<Option<Verdict>> =
            outcomes.iter().map(|o| if let Outcome::Decided { verdict, .. } = o { Some(*verdict) } else { None }).collect();
        assert_eq!(verdicts[0], Some(Verdict { change: Some(Change::Confirm), refusal: None }));
        assert_eq!(verdicts[1], Some(Verdict { change: Some(Change::Expire), refusal: Some(Refusal::HoldExpired) }));
        assert_eq!(verdicts[2], Some(Verdict { change: None, refusal: Some(Refusal::AlreadyConfirmed) }));
        assert_eq!(verdicts[3], Some(Verdict { change: None, refusal: Some(Refusal::OrderRejected) }));
        assert_eq!(outcomes[4], Outcome::Unknown { command_id: unknown.command_id });
        assert_eq!(ledger.deltas["P"], StockDelta { available: 2, reserved: -4, total: -2, sold: 2 });
        assert_eq!(ledger.available["P"], 2, "the expired hold's units are available again");
        assert_eq!(ledger.orders[&Uuid::from_u128(1)].status, Status::Confirmed);
        assert_eq!(ledger.orders[&Uuid::from_u128(2)].status, Status::Expired);
    }

    #[test]
    fn a_cart_is_held_confirmed_and_cancelled_whole() {
        let (x, y) = (cart(1, &[("A", 2), ("B", 3)], None), cart(2, &[("B", 1), ("C", 4)], Some(60)));
        let too_big = cart(3, &[("A", 1), ("C", 7)], None);
        let (confirm_x, cancel_y) = (command(10, 1, CommandKind::Confirm), command(11, 2, CommandKind::Cancel));
        let available: HashMap<String, i64> = [("A".to_owned(), 5), ("B".to_owned(), 5), ("C".to_owned(), 10)].into();
        let mut ledger = Ledger::new(available, HashMap::new());
        let steps = [
            Step::Place(&x),
            Step::Place(&y),
            Step::Place(&too_big),
            Step::Command { command: &confirm_x, parked: false },
            Step::Command { command: &cancel_y, parked: false },
        ];
        let outcomes = ledger.apply(&steps, at(0), 900);
        assert!(matches!(&outcomes[0], Outcome::Placed { decision: Decision::Reserved, expires_at: Some(e), .. } if *e == at(900)));
        assert!(matches!(&outcomes[1], Outcome::Placed { decision: Decision::Reserved, expires_at: Some(e), .. } if *e == at(60)));
        // C has 6 left when the third cart comes: its C line is short, and its A line takes nothing.
        assert_eq!(
            outcomes[2],
            Outcome::Placed { order_id: too_big.order_id, decision: Decision::Rejected(RejectReason::InsufficientStock), expires_at: None, short: vec![(1, RejectReason::InsufficientStock)] }
        );
        assert_eq!(ledger.orders[&Uuid::from_u128(1)].status, Status::Confirmed);
        assert_eq!(ledger.orders[&Uuid::from_u128(2)].status, Status::Cancelled);
        // x: reserved then sold on A and B; y: reserved then released on B and C.
        assert_eq!(ledger.deltas["A"], StockDelta { available: -2, reserved: 0, total: -2, sold: 2 });
        assert_eq!(ledger.deltas["B"], StockDelta { available: -3, reserved: 0, total: -3, sold: 3 });
        assert_eq!(ledger.deltas["C"], StockDelta::default());
        assert_eq!((ledger.available["A"], ledger.available["B"], ledger.available["C"]), (3, 2, 10));
        for delta in ledger.deltas.values() {
            assert_eq!(delta.available + delta.reserved, delta.total);
            assert_eq!(delta.total + delta.sold, 0, "received does not change");
        }
    }

    #[test]
    fn a_stored_carts_expiry_moves_each_line() {
        let hold = Hold {
            customer_id: "C".into(),
            lines: vec![HeldLine { product_id: "A".into(), quantity: 2 }, HeldLine { product_id: "B".into(), quantity: 5 }],
            status: Status::Reserved,
            expires_at: Some(at(-1)),
        };
        let moved: Vec<(&str, StockDelta)> = hold.stock(Change::Expire).collect();
        assert_eq!(moved, [("A", Change::Expire.stock(2)), ("B", Change::Expire.stock(5))]);
        let late = command(10, 7, CommandKind::Confirm);
        let mut ledger = Ledger::new([("A".to_owned(), 0), ("B".to_owned(), 0)].into(), [(Uuid::from_u128(7), hold)].into());
        let outcomes = ledger.apply(&[Step::Command { command: &late, parked: false }], at(0), 900);
        assert!(matches!(outcomes[0], Outcome::Decided { verdict: Verdict { change: Some(Change::Expire), refusal: Some(Refusal::HoldExpired) }, .. }));
        assert_eq!((ledger.available["A"], ledger.available["B"]), (2, 5), "every line's units are back");
    }

    #[test]
    fn an_order_for_an_unknown_product_is_rejected_and_refuses_commands() {
        let lost = order(1, "NOPE", 1, None);
        let confirm = command(10, 1, CommandKind::Confirm);
        let mut ledger = Ledger::default();
        let outcomes = ledger.apply(&[Step::Place(&lost), Step::Command { command: &confirm, parked: true }], at(0), 900);
        assert_eq!(outcomes[0], Outcome::Placed { order_id: lost.order_id, decision: Decision::Rejected(RejectReason::UnknownProduct), expires_at: None, short: vec![] });
        assert!(matches!(outcomes[1], Outcome::Decided { parked: true, verdict: Verdict { change: None, refusal: Some(Refusal::OrderRejected) }, .. }));
        assert!(ledger.deltas.is_empty());
    }
}
