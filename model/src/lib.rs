//! The consumer's protocol, model-checked (issue #14): poll, dedup, split, part
//! transactions, events, offsets, rebalances, crashes, redeliveries, commands, expiry and
//! carts, explored exhaustively within the bounds of a `World`. The model is built from the
//! consumer's own pure functions, so it checks the code and not a description of it; and
//! `replay` checks recorded traces of the real consumer against the same transition rules.

pub mod db;
pub mod mutation;
pub mod properties;
pub mod protocol;
pub mod replay;
pub mod report;
pub mod state;
pub mod world;

pub use mutation::Mutation;
pub use protocol::{Action, OrderflowModel};
pub use properties::PropertySet;
pub use report::{check, check_set, CheckReport};
pub use world::{Budget, World};
