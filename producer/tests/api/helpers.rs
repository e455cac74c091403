use deadpool_postgres::Pool;
use orderflow_common::db;
use orderflow_common::testing::{topic_message_count, TestBroker, TestDatabase};
use orderflow_producer::{Application, Settings};
use serde_json::{json, Value};

pub const TOPIC: &str = "orders-placed";

pub struct TestApp {
    pub address: String,
    pub broker: TestBroker,
    pub pool: Pool,
    pub client: reqwest::Client,
    // Held for its Drop, declared last so the database goes after everything using it.
    _database: TestDatabase,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the producer with default settings, changed by `customize`.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    let broker = TestBroker::start(&[(TOPIC.into(), 4)]).await;
    let db = TestDatabase::create().await;
    let pool = db::pool(&db.settings()).expect("pool");
    db::migrate(&pool).await.expect("migrations");
    let mut settings = Settings::new(broker.kafka_settings(), db.settings());
    customize(&mut settings);
    let app = Application::build(settings).await.expect("producer starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp { address, broker, pool, client: reqwest::Client::new(), _database: db }
}

pub fn order(customer: &str, product: &str, quantity: i64) -> Value {
    json!({"customer_id": customer, "product_id": product, "quantity": quantity, "amount": 19.99})
}

impl TestApp {
    /// Another producer instance on the same broker and database (a restart, or a second
    /// instance behind a load balancer); returns its base address.
    pub async fn start_sibling(&self, customize: impl FnOnce(&mut Settings)) -> String {
        let mut settings = Settings::new(self.broker.kafka_settings(), self._database.settings());
        customize(&mut settings);
        let app = Application::build(settings).await.expect("producer starts");
        let address = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped());
        address
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(format!("{}{path}", self.address)).json(body).send().await.expect("request sent")
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.address)).send().await.expect("request sent")
    }

    pub async fn published(&self) -> i64 {
        topic_message_count(&self.broker.bootstrap_servers(), &self.broker.name(TOPIC)).await
    }
}

/// Asserts the status and that the body is a JSON object with an `error` string; returns it.
pub async fn assert_json_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let body: Value = response.json().await.expect("error body is JSON");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "body names the problem: {body}");
    body
}
