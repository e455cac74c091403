//! `dev-broker`: hosts librdkafka's in-memory mock cluster on a fixed address for local runs.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use orderflow_common::config::LogSettings;
use orderflow_common::dev_broker::DevBroker;
use orderflow_common::shutdown::termination_signal;
use orderflow_common::{telemetry, DEAD_LETTER_TOPIC};

#[derive(Debug, Parser)]
#[command(about = "In-memory Kafka-compatible broker for development (librdkafka mock cluster)")]
struct Args {
    /// Address clients connect to.
    #[arg(long, env = "DEV_BROKER_ADDR", default_value = "127.0.0.1:9092")]
    listen: SocketAddr,
    /// Orders topic.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "orders-placed")]
    topic: String,
    /// Partitions of the orders topic. Fewer than in production on purpose: the mock
    /// cluster finds a fetch offset by walking the partition's message sets from the oldest,
    /// so many small partitions (small sets) cost it CPU that the consumer and PostgreSQL
    /// need. 12 still allows 12 consumers in the group.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 12)]
    partitions: i32,
    /// Topic of the order events (as the consumer's ORDER_EVENTS_TOPIC), same partitions.
    #[arg(long = "events-topic", env = "ORDER_EVENTS_TOPIC", default_value = orderflow_common::events::EVENTS_TOPIC)]
    events_topic: String,
    #[command(flatten)]
    log: LogSettings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log.format);
    let topics = [(args.topic.clone(), args.partitions), (DEAD_LETTER_TOPIC.to_owned(), 1), (args.events_topic.clone(), args.partitions)];
    let broker = DevBroker::start(args.listen, &topics).await.context("starting the dev broker")?;
    println!("dev broker ready on {}", broker.bootstrap_servers());
    termination_signal().await;
    tracing::info!("dev broker stopping; all messages were in memory and are gone");
    Ok(())
}
