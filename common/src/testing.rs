//! Test support shared by the crates' integration tests: a fresh database per test,
//! dropped afterwards, and the Kafka broker the test talks to.

use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::config::{parse_properties, DatabaseSettings, KafkaSettings};
use crate::dev_broker::{DevBroker, TopicSpec};

/// Set to a bootstrap address to run the Kafka-facing tests against that broker instead of
/// an in-process mock cluster (scripts/conformance.sh does, with tansu).
pub const EXTERNAL_BROKERS_VAR: &str = "ORDERFLOW_TEST_KAFKA_BROKERS";
/// Extra librdkafka properties (`key=value,...`) for the services under test on the
/// external broker; ignored on the mock.
pub const EXTERNAL_CONFIG_VAR: &str = "ORDERFLOW_TEST_KAFKA_CONFIG";

/// The broker a test runs against. Every name a test gives the broker (topics, consumer
/// groups) goes through [`TestBroker::name`]: on the mock, which is the test's alone, names
/// stay as in production; on a shared external broker they get a suffix unique to the test.
pub enum TestBroker {
    /// librdkafka's mock cluster, in process, one per test: the default, and what CI runs.
    Mock(DevBroker),
    /// A broker other tests share, named by `ORDERFLOW_TEST_KAFKA_BROKERS`.
    External { bootstrap: String, suffix: String },
}

impl TestBroker {
    /// The external broker when `ORDERFLOW_TEST_KAFKA_BROKERS` is set, else a fresh mock
    /// cluster; `topics` (production names) are created either way.
    pub async fn start(topics: &[TopicSpec]) -> Self {
        match std::env::var(EXTERNAL_BROKERS_VAR) {
            Ok(bootstrap) if !bootstrap.trim().is_empty() => {
                let broker = Self::External { bootstrap, suffix: Uuid::now_v7().simple().to_string() };
                let named: Vec<TopicSpec> = topics.iter().map(|(name, partitions)| (broker.name(name), *partitions)).collect();
                create_topics(broker.bootstrap_servers(), &named).await;
                broker
            }
            _ => Self::mock(topics).await,
        }
    }

    /// A mock cluster of the test's own, whatever `ORDERFLOW_TEST_KAFKA_BROKERS` says: for
    /// tests of mock-only behaviour (a broker that restarts, a log that drops old data).
    pub async fn mock(topics: &[TopicSpec]) -> Self {
        Self::Mock(DevBroker::start("127.0.0.1:0".parse().expect("valid address"), topics).await.expect("dev broker"))
    }

    pub fn bootstrap_servers(&self) -> String {
        match self {
            Self::Mock(broker) => broker.bootstrap_servers(),
            Self::External { bootstrap, .. } => bootstrap.clone(),
        }
    }

    /// The name this test uses for a topic or consumer group called `base` in production.
    pub fn name(&self, base: &str) -> String {
        match self {
            Self::Mock(_) => base.to_owned(),
            Self::External { suffix, .. } => format!("{base}-{suffix}"),
        }
    }

    /// Settings for a service under test: this broker, the orders topic under its test name,
    /// and on the external broker the properties of `ORDERFLOW_TEST_KAFKA_CONFIG`.
    pub fn kafka_settings(&self) -> KafkaSettings {
        let mut settings = KafkaSettings::new(self.bootstrap_servers());
        settings.topic = self.name(&settings.topic);
        if let Self::External { .. } = self {
            let raw = std::env::var(EXTERNAL_CONFIG_VAR).unwrap_or_default();
            settings.extra = parse_properties(&raw).unwrap_or_else(|e| panic!("{EXTERNAL_CONFIG_VAR}: {e}"));
        }
        settings
    }
}

/// Creates `topics` through the Kafka admin API and waits until the metadata shows every
/// partition, so a test never races the broker's own topic creation.
async fn create_topics(bootstrap: String, topics: &[TopicSpec]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("admin client");
    let new: Vec<NewTopic<'_>> = topics.iter().map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(30)));
    for result in admin.create_topics(&new, &options).await.expect("CreateTopics request") {
        if let Err((topic, code)) = result {
            panic!("cannot create topic {topic} on {bootstrap}: {code:?}");
        }
    }
    // fetch_metadata blocks; poll on a blocking thread, not a Tokio worker.
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        for (name, partitions) in &topics {
            loop {
                match crate::kafka::topic_partitions(admin.inner(), name, std::time::Duration::from_secs(5)) {
                    Ok(found) if found == *partitions as usize => break,
                    other => assert!(std::time::Instant::now() < deadline, "topic {name} not ready on {bootstrap}: {other:?}"),
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    })
    .await
    .expect("topic metadata task");
}

/// The server tests run against: `TEST_DATABASE_URL`, else `DATABASE_URL`, else local PostgreSQL.
/// Only host, port and credentials are used; each test gets a database of its own.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates an empty database named `orderflow_test_<uuid>`; migrations are the app's job.
    pub async fn create() -> Self {
        let mut config: tokio_postgres::Config = server_url().parse().expect("valid test database URL");
        config.dbname("postgres");
        let name = format!("orderflow_test_{}", Uuid::now_v7().simple());
        let (client, connection) = config.connect(NoTls).await.expect("PostgreSQL must be running for these tests");
        tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
        let admin_url = with_dbname(&server_url(), "postgres");
        let url = with_dbname(&server_url(), &name);
        Self { name, url, admin_url }
    }

    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings::new(&self.url)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside async context; a throwaway thread and runtime keep it simple.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&admin_url, NoTls).await.ok()?;
                tokio::spawn(connection);
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.ok()
            })
        })
        .join();
    }
}

/// Replaces the database name in a `postgres://` URL, keeping any query string.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{dbname}?{query}"),
        None => format!("{base}/{dbname}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{with_dbname, TestBroker};

    #[test]
    fn names_get_a_suffix_only_on_a_shared_broker() {
        let shared = TestBroker::External { bootstrap: "127.0.0.1:1".into(), suffix: "abc".into() };
        assert_eq!(shared.name("orders-placed"), "orders-placed-abc");
        assert_eq!(shared.kafka_settings().topic, "orders-placed-abc");
    }

    #[test]
    fn dbname_is_replaced() {
        assert_eq!(with_dbname("postgres://u@h:1/a", "b"), "postgres://u@h:1/b");
        assert_eq!(with_dbname("postgres://u@h:1", "b"), "postgres://u@h:1/b");
        assert_eq!(with_dbname("postgres://u@h/a?sslmode=disable", "b"), "postgres://u@h/b?sslmode=disable");
    }
}

/// How many messages `topic` holds: the sum of its partitions' high watermarks. Exact for
/// a topic without transactions or compaction that deletes nothing within a test's volume.
pub async fn topic_message_count(bootstrap: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "orderflow-test-watermarks")
            .create()
            .expect("create watermark consumer");
        let timeout = std::time::Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout).expect("topic metadata");
        metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| consumer.fetch_watermarks(&topic, p.id(), timeout).expect("watermarks").1)
            .sum()
    })
    .await
    .expect("watermark task")
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Stops a binary a test started: SIGTERM, then asserts the exit status 0 of a graceful stop.
/// The wait runs on a blocking thread, off the test's Tokio workers.
pub async fn stop(process: std::process::Child) {
    let status = std::process::Command::new("kill").args(["-TERM", &process.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let mut process = process;
        process.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(exit.success(), "exits 0 on SIGTERM: {exit:?}");
}
