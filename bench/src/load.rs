//! Driving the public API: batches (or single orders) from a number of concurrent clients,
//! closed-loop as fast as answers come, or open-loop at a fixed rate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use uuid::Uuid;

use crate::workload::Order;

#[derive(Debug, Clone)]
pub struct LoadSettings {
    pub producer_url: String,
    /// Orders per request; 1 uses POST /order.
    pub batch_size: usize,
    pub clients: usize,
    /// Open loop: orders per second to offer, whatever the answers. `None` is closed loop.
    pub rate: Option<f64>,
    /// Send an Idempotency-Key with every request, so retries after faults are safe.
    pub idempotency_keys: bool,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    pub accepted: Vec<Uuid>,
    /// Requests that did not get a 202 after retries, and their orders.
    pub failed_requests: usize,
    pub failed_orders: usize,
    pub elapsed: Duration,
}

impl LoadResult {
    pub fn accepted_per_second(&self) -> f64 {
        self.accepted.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Pre-serialized request bodies, so generating load costs little during the run.
pub fn bodies(orders: &[Order], batch_size: usize) -> Vec<(usize, String)> {
    orders
        .chunks(batch_size.max(1))
        .map(|chunk| {
            let body = if batch_size == 1 {
                chunk[0].to_json().to_string()
            } else {
                Value::Array(chunk.iter().map(Order::to_json).collect()).to_string()
            };
            (chunk.len(), body)
        })
        .collect()
}

pub async fn run(settings: &LoadSettings, bodies: Vec<(usize, String)>, label: &str) -> LoadResult {
    let total: usize = bodies.iter().map(|(n, _)| n).sum();
    let progress = ProgressBar::new(total as u64).with_message(label.to_owned());
    progress.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} orders {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let path = if settings.batch_size == 1 { "/order" } else { "/orders/batch" };
    let url = format!("{}{path}", settings.producer_url.trim_end_matches('/'));
    let client = reqwest::Client::builder().pool_max_idle_per_host(settings.clients * 2).build().expect("http client");
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let result = Arc::new(Mutex::new(LoadResult::default()));
    let started = Instant::now();

    // One key per request body, unique to this run.
    let settings_key: Option<String> = settings.idempotency_keys.then(|| format!("{label}-{}", Uuid::now_v7()));
    let interval = settings.rate.map(|rate| Duration::from_secs_f64(settings.batch_size as f64 / rate));
    let mut tasks = Vec::new();
    match interval {
        None => {
            for _ in 0..settings.clients {
                let (client, url, bodies, next, result, progress, settings_key) =
                    (client.clone(), url.clone(), bodies.clone(), next.clone(), result.clone(), progress.clone(), settings_key.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some((count, body)) = bodies.get(index) else { break };
                        send(&client, &url, body, *count, key(&settings_key, index), &result).await;
                        progress.inc(*count as u64);
                    }
                }));
            }
        }
        Some(interval) => {
            // Open loop: a request starts every `interval` whether earlier ones answered or
            // not, so queueing shows up as latency instead of slowing the sender down.
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for index in 0..bodies.len() {
                ticker.tick().await;
                let (client, url, bodies, result, progress, settings_key) =
                    (client.clone(), url.clone(), bodies.clone(), result.clone(), progress.clone(), settings_key.clone());
                tasks.push(tokio::spawn(async move {
                    let (count, body) = &bodies[index];
                    send(&client, &url, body, *count, key(&settings_key, index), &result).await;
                    progress.inc(*count as u64);
                }));
            }
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    progress.finish_and_clear();
    let mut result = std::mem::take(&mut *result.lock().expect("result lock"));
    result.elapsed = started.elapsed();
    result
}

fn key(prefix: &Option<String>, index: usize) -> Option<String> {
    prefix.as_ref().map(|prefix| format!("{prefix}-{index}"))
}

/// One request, retried on connection errors, 429 and 503 (Retry-After honoured). Without
/// an idempotency key a retry after a lost answer could create a second order, so retries
/// are few; with one they are safe, and the budget covers a restarting service.
async fn send(client: &reqwest::Client, url: &str, body: &str, count: usize, key: Option<String>, result: &Mutex<LoadResult>) {
    let attempts = if key.is_some() { 150 } else { 5 };
    for attempt in 0..attempts {
        let mut request = client.post(url).header("content-type", "application/json").body(body.to_owned());
        if let Some(key) = &key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%error, attempt, "request failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        if status == 202 {
            let body: Value = response.json().await.unwrap_or_default();
            let ids = accepted_ids(&body);
            result.lock().expect("result lock").accepted.extend(ids);
            return;
        }
        if status == 429 || status == 503 {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map_or(Duration::from_millis(200), Duration::from_secs);
            tokio::time::sleep(wait).await;
            continue;
        }
        let body = response.text().await.unwrap_or_default();
        tracing::warn!(status, %body, "request refused");
        break;
    }
    let mut result = result.lock().expect("result lock");
    result.failed_requests += 1;
    result.failed_orders += count;
}

fn accepted_ids(body: &Value) -> Vec<Uuid> {
    let one = |v: &Value| v["order_id"].as_str().and_then(|s| s.parse().ok());
    match body["orders"].as_array() {
        Some(orders) => orders.iter().filter_map(one).collect(),
        None => one(body).into_iter().collect(),
    }
}
