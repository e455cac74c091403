//! Order flow tests against real PostgreSQL and the Kafka protocol (the dev broker):
//! each test gets a fresh database and its own broker.

mod admin;
mod crash;
mod end_to_end;
mod faults;
mod gaps;
mod invalid;
mod lag;
mod permanent;
mod plans;
mod race;
mod redelivery;
mod supervision;
mod support;
