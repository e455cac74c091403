//! `loadgen`: drives orderflow through its public API and measures it from the database,
//! beside two references on the same PostgreSQL. See scripts/bench.sh.

mod chart;
mod checkout;
mod consumers;
mod cpu;
mod load;
mod measure;
mod reference;
mod report;
mod rss;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use deadpool_postgres::Pool;
use uuid::Uuid;

use orderflow_common::config::DatabaseSettings;
use orderflow_common::db;
use orderflow_common::testing::TestDatabase;

use crate::load::LoadSettings;
use crate::report::{Machine, Reference, Report, Run};
use crate::workload::Workload;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "orderflow load generator and benchmark")]
struct Args {
    /// Producer API base URL.
    #[arg(long, env = "PRODUCER_URL", default_value = "http://127.0.0.1:8080")]
    producer_url: String,
    /// The database the consumer writes to. The bench creates products of its own there
    /// (`BENCH-<run id>-...`) and touches nothing else.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/orderflow")]
    database_url: String,
    /// Workloads to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Workload::FlashSale, Workload::OneHotRow, Workload::Catalog])]
    workloads: Vec<Workload>,
    /// Orders per workload.
    #[arg(long, default_value_t = 200_000)]
    orders: usize,
    /// Orders per request (1 = single-order mode on POST /order).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Random seed: the same seed gives the same orders.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Warm-up orders (on a product of their own), not counted.
    #[arg(long, default_value_t = 20_000)]
    warmup: usize,
    /// Run every workload open-loop at this many orders/s (default: closed loop, as fast as
    /// answers come).
    #[arg(long)]
    rate: Option<f64>,
    /// Send an Idempotency-Key with each request so that retries after faults are safe.
    #[arg(long)]
    idempotency_keys: bool,
    /// Also run flash-sale open-loop at this fraction of its measured end-to-end rate (0 = no).
    #[arg(long, default_value_t = 0.5)]
    open_loop_fraction: f64,
    /// Orders for the per-order reference (it is slow; its rate is what matters).
    #[arg(long, default_value_t = 20_000)]
    reference_orders: usize,
    /// Concurrent workers of the per-order reference.
    #[arg(long, default_value_t = 50)]
    reference_workers: usize,
    /// Orders per transaction group in the set-based ceiling. Each size is tried on a fresh
    /// database and the fastest is the ceiling, so the ratio is against the best of them.
    #[arg(long, value_delimiter = ',', default_values_t = [2000, 5000, 10000, 20000])]
    ceiling_batch: Vec<usize>,
    /// Parallel writers (split by product) in the set-based ceiling.
    #[arg(long, default_value_t = 4)]
    ceiling_workers: usize,
    #[arg(long)]
    skip_references: bool,
    /// Backlog mode: the consumer admin URL (e.g. http://127.0.0.1:8081) to pause before each
    /// workload's load and resume after it, so every accepted order waits in the broker first.
    #[arg(long)]
    pause_consumer: Option<String>,
    /// With --pause-consumer: a shell command run after the load and before the resume (for
    /// example one that kills and restarts the broker while it holds the whole backlog).
    #[arg(long, requires = "pause_consumer")]
    before_resume: Option<String>,
    /// Bearer token for --pause-consumer.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Longest wait for the consumer to finalize a run's orders.
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
    /// Where JSON, Markdown and the chart go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    #[arg(long, default_value = ".run/pids/producer.pid")]
    producer_pid_file: String,
    #[arg(long, default_value = ".run/pids/consumer.pid")]
    consumer_pid_file: String,
    /// Keep the run's products and orders in the database afterwards (default: deleted once
    /// measured; both are named `BENCH-<run id>-...`).
    #[arg(long)]
    keep_data: bool,
    /// Scale the local stack to each of these consumer counts in turn (`CONSUMERS=N
    /// scripts/up.sh`, which returns once the group has settled) and run the workloads at
    /// each; one report. Empty: the stack as it is.
    #[arg(long, value_delimiter = ',')]
    consumers: Vec<usize>,
    /// The first consumer's admin URL; the others of `scripts/up.sh` follow on the next ports.
    /// Their /metrics give each run's breakdown (batch size, lock conflicts, backoff).
    #[arg(long, env = "CONSUMER_ADMIN_URL", default_value = "http://127.0.0.1:8081")]
    consumer_admin_url: String,
}

/// The products a run created, deleted at the end unless `--keep-data`.
#[derive(Default)]
struct Created {
    products: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_common::telemetry::init(orderflow_common::config::LogFormat::Text);
    let args = Args::parse();
    let pool = db::pool(&DatabaseSettings::new(&args.database_url))?;
    db::ping(&pool).await.context("database not reachable: is the stack up (scripts/up.sh)?")?;
    measure::refresh_planner_statistics(&pool).await?;
    let run_id = format!("{}-{:04x}", chrono::Utc::now().format("%Y%m%dT%H%M%S"), rand::random::<u16>());
    eprintln!("run {run_id}: products BENCH-{run_id}-*");
    let mut report = Report {
        started_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        run_id: run_id.clone(),
        machine: Machine::detect(),
        runs: Vec::new(),
        references: Vec::new(),
    };
    let load = LoadSettings {
        producer_url: args.producer_url.clone(),
        batch_size: args.batch_size,
        clients: args.clients,
        rate: args.rate,
        idempotency_keys: args.idempotency_keys,
    };

    let mut created = Created::default();
    let measured = measure_all(&args, &pool, &load, &run_id, &mut created, &mut report).await;
    // Also after a failed run: what was created is named and scoped, so deleting it is safe.
    if args.keep_data {
        eprintln!("kept the run's {} products and their orders (--keep-data): BENCH-{run_id}-*", created.products.len());
    } else if !created.products.is_empty() {
        let (orders, products) = measure::remove(&pool, &created.products).await?;
        eprintln!("deleted the run's {orders} orders and {products} products (BENCH-{run_id}-*)");
    }
    measured?;
    if !args.skip_references {
        report.references.push(per_order_reference(&args, &run_id).await?);
        report.references.push(set_based_reference(&args, &run_id).await?);
    }

    std::fs::create_dir_all(&args.out)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let json = args.out.join(format!("bench-{stamp}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    let markdown = report.markdown();
    std::fs::write(args.out.join(format!("bench-{stamp}.md")), &markdown)?;
    std::fs::write(args.out.join("latest.md"), &markdown)?;
    let png = args.out.join(format!("bench-{stamp}.png"));
    if let Err(error) = chart::draw(&report, &png) {
        eprintln!("chart not drawn: {error}");
    }
    println!("\n{markdown}");
    println!("results: {} (and .md, .png)", json.display());
    let failed = report.runs.iter().any(|run| !run.checks.passed() || run.checkout.as_ref().is_some_and(|c| !c.checks_passed)) || report.references.iter().any(|r| !r.checks_passed);
    anyhow::ensure!(!failed, "a correctness check failed: see the table");
    Ok(())
}

/// The warm-up and every workload run, each on products of its own.
async fn measure_all(args: &Args, pool: &Pool, load: &LoadSettings, run_id: &str, created: &mut Created, report: &mut Report) -> anyhow::Result<()> {
    let counts: Vec<Option<usize>> = if args.consumers.is_empty() { vec![None] } else { args.consumers.iter().copied().map(Some).collect() };
    for count in counts {
        let (tag, suffix) = match count {
            Some(n) => {
                scale_consumers(n).await?;
                (format!("c{n}-"), format!(", {n} consumer{}", if n == 1 { "" } else { "s" }))
            }
            None => (String::new(), String::new()),
        };
        if args.warmup > 0 {
            warm_up(args, pool, load, run_id, &format!("{tag}warmup"), created).await?;
            tidy(args, pool, created).await?;
        }
        for (index, workload) in args.workloads.iter().enumerate() {
            let step = format!("{tag}{}", 2 * index + 1);
            let name = format!("{}{suffix}", workload.name());
            let run = run_workload(args, pool, load, *workload, name, &step, run_id, created, count).await?;
            let open_loop = *workload == Workload::FlashSale && args.open_loop_fraction > 0.0 && args.rate.is_none();
            let half = run.outcome.end_to_end_per_second * args.open_loop_fraction;
            report.runs.push(run);
            tidy(args, pool, created).await?;
            if open_loop && half > 0.0 {
                let settings = LoadSettings { rate: Some(half), ..load.clone() };
                let name = format!("flash-sale open loop @ {half:.0}/s{suffix}");
                let step = format!("{tag}{}", 2 * index + 2);
                report.runs.push(run_workload(args, pool, &settings, *workload, name, &step, run_id, created, count).await?);
                tidy(args, pool, created).await?;
            }
        }
    }
    Ok(())
}

/// Deletes what the run just measured (and vacuums: `measure::remove`), so that every run
/// starts on the tables the first one found. Kept until the end, the earlier runs' orders
/// made each later run slower: with `--consumers 1,4`, the 4-consumer runs came after 600,000
/// orders of the 1-consumer ones. Nothing is deleted with --keep-data.
async fn tidy(args: &Args, pool: &Pool, created: &mut Created) -> anyhow::Result<()> {
    if args.keep_data || created.products.is_empty() {
        return Ok(());
    }
    measure::remove(pool, &created.products).await?;
    created.products.clear();
    Ok(())
}

/// `CONSUMERS=n scripts/up.sh`: scales the local stack and returns once the group settled.
async fn scale_consumers(n: usize) -> anyhow::Result<()> {
    eprintln!("scaling to {n} consumer(s): CONSUMERS={n} scripts/up.sh");
    let output = tokio::process::Command::new("scripts/up.sh").env("CONSUMERS", n.to_string()).output().await.context("running scripts/up.sh")?;
    anyhow::ensure!(output.status.success(), "CONSUMERS={n} scripts/up.sh failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

async fn warm_up(args: &Args, pool: &Pool, load: &LoadSettings, run_id: &str, step: &str, created: &mut Created) -> anyhow::Result<()> {
    let orders = Workload::OneHotRow.orders(args.warmup, args.seed, &workload::product_prefix(run_id, step));
    let stock: Vec<(String, i64)> = Workload::OneHotRow.stock(&orders);
    measure::create_stock(pool, &stock).await?;
    let products = measure::products(&stock);
    created.products.extend_from_slice(&products);
    let result = load::run(load, load::bodies(&orders, args.batch_size), "warm-up").await;
    measure::wait_finalized(pool, &products, result.accepted.len() as i64, Duration::from_secs(args.timeout_seconds)).await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_workload(
    args: &Args,
    pool: &Pool,
    load: &LoadSettings,
    workload: Workload,
    name: String,
    step: &str,
    run_id: &str,
    created: &mut Created,
    consumers: Option<usize>,
) -> anyhow::Result<Run> {
    let consumers = consumers.unwrap_or_else(running_consumers);
    let admin_urls = consumers::admin_urls(&args.consumer_admin_url, consumers)?;
    let counters_before = consumers::scrape(&admin_urls).await;
    let pid_dir = std::path::Path::new(&args.producer_pid_file).parent().unwrap_or(std::path::Path::new(".")).to_owned();
    let database = database_name(&args.database_url);
    let cpu_before = cpu::sample(&pid_dir, &database);
    let orders = workload.orders(args.orders, args.seed, &workload::product_prefix(run_id, step));
    let stock = workload.stock(&orders);
    measure::create_stock(pool, &stock).await?;
    let products = measure::products(&stock);
    created.products.extend_from_slice(&products);
    let producer_rss = rss::PeakRss::start(rss::pid_from_file(&args.producer_pid_file));
    let consumer_rss = rss::PeakRss::start(rss::pid_from_file(&args.consumer_pid_file));
    if let Some(admin) = &args.pause_consumer {
        consumer_control(admin, args.admin_token.as_deref(), "pause").await?;
    }
    let bodies = match workload {
        Workload::Checkout => checkout::bodies(&orders, args.batch_size),
        _ => load::bodies(&orders, args.batch_size),
    };
    let result = load::run(load, bodies, &name).await;
    if let Some(admin) = &args.pause_consumer {
        let in_database = measure::count(pool, &products).await?;
        eprintln!("{name}: {} accepted while the consumer was paused ({in_database} in the database)", result.accepted.len());
        if let Some(command) = &args.before_resume {
            eprintln!("{name}: running before resuming: {command}");
            let status = tokio::process::Command::new("sh").arg("-c").arg(command).status().await?;
            anyhow::ensure!(status.success(), "--before-resume command failed: {status}");
        }
        eprintln!("{name}: resuming the consumer");
        consumer_control(admin, args.admin_token.as_deref(), "resume").await?;
    }
    let expected = result.accepted.len() as i64;
    let finalized = measure::wait_finalized(pool, &products, expected, Duration::from_secs(args.timeout_seconds)).await?;
    if finalized < expected {
        eprintln!("{name}: only {finalized} of {expected} accepted orders finalized within {} s", args.timeout_seconds);
    }
    let (producer_peak, consumer_peak) = (producer_rss.finish(), consumer_rss.finish());
    let breakdown = consumers::Breakdown::new(consumers, consumers::scrape(&admin_urls).await - counters_before);
    let cpu_us_per_order = cpu::per_order(&cpu_before, &cpu::sample(&pid_dir, &database), orders.len());
    measure::analyze_orders(pool).await?;
    let outcome = measure::outcome(pool, &products).await?;
    let checks = measure::checks(pool, &result.accepted, &stock).await?;
    // Commands and expiry come after the placements are measured, so flash-sale's numbers
    // and checks above mean the same for checkout.
    let checkout = match workload {
        Workload::Checkout => Some(checkout::run(load, pool, &products, &stock, args.seed, Duration::from_secs(args.timeout_seconds)).await?),
        _ => None,
    };
    eprintln!("{name}: {:.0} accepted/s, {:.0} end-to-end/s, p99 {:.0} ms", result.accepted_per_second(), outcome.end_to_end_per_second, outcome.latency.p99_ms);
    let lines = orders.iter().map(|order| order.lines.len()).sum::<usize>();
    Ok(Run {
        name,
        orders: orders.len(),
        lines,
        lines_per_second: outcome.end_to_end_per_second * lines as f64 / orders.len().max(1) as f64,
        batch_size: load.batch_size,
        clients: load.clients,
        offered_rate: load.rate,
        accepted_per_second: result.accepted_per_second(),
        failed_orders: result.failed_orders,
        outcome,
        checks,
        producer_peak_rss_mib: producer_peak,
        consumer_peak_rss_mib: consumer_peak,
        consumers: breakdown,
        cpu_us_per_order,
        checkout,
    })
}

/// The database name of a postgres:// URL, for telling its backends from others.
fn database_name(url: &str) -> String {
    url.rsplit('/').next().unwrap_or_default().split('?').next().unwrap_or_default().to_owned()
}

/// How many consumers `scripts/up.sh` last started (`.run/consumers`), else one.
fn running_consumers() -> usize {
    std::fs::read_to_string(".run/consumers").ok().and_then(|text| text.trim().parse().ok()).unwrap_or(1)
}

/// POST {admin}/pause or /resume on the consumer's admin server.
async fn consumer_control(admin: &str, token: Option<&str>, action: &str) -> anyhow::Result<()> {
    let url = format!("{}/{action}", admin.trim_end_matches('/'));
    let token = token.context("--pause-consumer needs ADMIN_TOKEN (or --admin-token)")?;
    let response = reqwest::Client::new().post(&url).bearer_auth(token).send().await.with_context(|| format!("POST {url}"))?;
    anyhow::ensure!(response.status().is_success(), "POST {url}: {} {}", response.status(), response.text().await.unwrap_or_default());
    Ok(())
}

/// A scratch database on the same server, migrated, with the workload's stock.
async fn scratch(stock: &[(String, i64)]) -> anyhow::Result<(TestDatabase, Pool)> {
    let database = TestDatabase::create().await;
    let mut settings = database.settings();
    settings.pool_size = 64;
    let pool = db::pool(&settings)?;
    db::migrate(&pool).await?;
    measure::create_stock(&pool, stock).await?;
    Ok((database, pool))
}

async fn per_order_reference(args: &Args, run_id: &str) -> anyhow::Result<Reference> {
    let orders = Workload::FlashSale.orders(args.reference_orders, args.seed, &workload::product_prefix(run_id, "ref"));
    let stock = Workload::FlashSale.stock(&orders);
    let (_database, pool) = scratch(&stock).await?;
    eprintln!("per-order reference: {} orders, {} workers", orders.len(), args.reference_workers);
    let elapsed = reference::per_order(&pool, &orders, args.reference_workers).await?;
    finish_reference(format!("per-order design ({} workers)", args.reference_workers), &pool, orders.len(), elapsed, &stock).await
}

async fn set_based_reference(args: &Args, run_id: &str) -> anyhow::Result<Reference> {
    let orders = Workload::FlashSale.orders(args.orders, args.seed, &workload::product_prefix(run_id, "ref"));
    let stock = Workload::FlashSale.stock(&orders);
    let mut best: Option<Reference> = None;
    for &chunk in &args.ceiling_batch {
        let (_database, pool) = scratch(&stock).await?;
        eprintln!("set-based ceiling: {} orders in transactions of {chunk}", orders.len());
        let elapsed = reference::set_based(&pool, &orders, chunk, args.ceiling_workers).await?;
        let name = format!("set-based database ceiling ({chunk} per batch)");
        let candidate = finish_reference(name, &pool, orders.len(), elapsed, &stock).await?;
        // A failed check disqualifies nobody silently: it is kept and fails the run.
        if best.as_ref().is_none_or(|b| !candidate.checks_passed || (b.checks_passed && candidate.per_second > b.per_second)) {
            best = Some(candidate);
        }
    }
    best.context("no ceiling batch size given")
}

async fn finish_reference(
    name: String,
    pool: &Pool,
    orders: usize,
    elapsed: Duration,
    stock: &[(String, i64)],
) -> anyhow::Result<Reference> {
    let products = measure::products(stock);
    let outcome = measure::outcome(pool, &products).await?;
    let ids: Vec<Uuid> = pool
        .get()
        .await?
        .query("SELECT order_id FROM orders WHERE product_id = ANY($1)", &[&products])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let checks = measure::checks(pool, &ids, stock).await?;
    let per_second = orders as f64 / elapsed.as_secs_f64();
    eprintln!("{name}: {per_second:.0} orders/s");
    Ok(Reference {
        name,
        orders,
        seconds: elapsed.as_secs_f64(),
        per_second,
        checks_passed: checks.passed() && ids.len() == orders,
        timeline: outcome.timeline,
    })
}
