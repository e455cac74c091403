//! Order flow tests against real PostgreSQL and the Kafka protocol: each test gets a fresh
//! database and its own dev broker, or its own topics and groups on the broker named by
//! ORDERFLOW_TEST_KAFKA_BROKERS (scripts/conformance.sh).

mod adaptive;
mod admin;
mod cart_holds;
mod carts;
mod crash;
mod dashboard;
mod end_to_end;
mod expiry;
mod faults;
mod gaps;
mod invalid;
mod lag;
mod lanes;
mod lifecycle;
mod permanent;
mod plans;
mod protocol_trace;
mod race;
mod shutdown;
mod redelivery;
mod stale_batch;
mod supervision;
mod support;
mod traced;
