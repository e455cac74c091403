//! Test support shared by the crates' integration tests: a fresh database per test,
//! dropped afterwards.

use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::config::DatabaseSettings;

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
    use super::with_dbname;

    #[test]
    fn dbname_is_replaced() {
        assert_eq!(with_dbname("postgres://u@h:1/a", "b"), "postgres://u@h:1/b");
        assert_eq!(with_dbname("postgres://u@h:1", "b"), "postgres://u@h:1/b");
        assert_eq!(with_dbname("postgres://u@h/a?sslmode=disable", "b"), "postgres://u@h/b?sslmode=disable");
    }
}

/// How many messages `topic` holds: the sum of its partitions' high watermarks. Exact for
/// the mock cluster, which never deletes within a test's volume.
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
