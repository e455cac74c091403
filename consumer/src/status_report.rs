//! The consumer's report of itself for the dashboard: once a second it upserts one row,
//! keyed by its member id (host and pid), into the UNLOGGED `consumer_status` table.
//! Compose scales consumers with no fixed ports, so the producer cannot ask each of them;
//! it reads the rows instead (producer/src/dashboard). A failed write is logged,
//! rate-limited, and never fatal: the dashboard then shows this member as gone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rdkafka::consumer::Consumer;

use orderflow_common::errors::Chain;
use orderflow_common::log_limit::{self, LogLimiter};
use orderflow_common::member_report::{HotInterval, MemberReport, PartitionReport};

use crate::activity::{Activity, Interval};
use crate::control::Control;
use crate::gaps::Gaps;
use crate::pipeline::OrderConsumer;
use crate::stats::{Stats, Totals};
use crate::stuck::StuckWrites;

/// Products listed per interval: the dashboard shows the busiest few across all members.
const HOT_PRODUCTS: usize = 10;
/// Intervals repeated in each report: the dashboard reads once a second, so a read may miss
/// a report (two reports between reads, a slow write) but not five in a row.
const HOT_INTERVALS: usize = 5;
/// A write slower than this is given up; the next tick tries again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

const UPSERT: &str = "INSERT INTO consumer_status (member_id, report, updated_at) VALUES ($1, $2, now()) \
     ON CONFLICT (member_id) DO UPDATE SET report = excluded.report, updated_at = excluded.updated_at";

static WRITE_ERRORS: LogLimiter = LogLimiter::new(log_limit::EVERY);

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
}

/// Who this member is: fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub admin_port: u16,
    pub started_at: DateTime<Utc>,
}

impl Member {
    /// Host name and pid: unique across compose replicas (each its own host name) and
    /// across the processes of `CONSUMERS=N scripts/up.sh` (one host, different pids).
    pub fn this_process(admin_port: u16) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown-host".to_owned());
        let pid = std::process::id();
        Self { id: format!("{host}/{pid}"), host, pid, admin_port, started_at: Utc::now() }
    }
}

pub struct StatusReporter {
    pub member: Member,
    pub pool: Pool,
    pub consumer: Arc<OrderConsumer>,
    pub control: Arc<Control>,
    pub gaps: Arc<Gaps>,
    pub stuck: Arc<StuckWrites>,
    pub stats: Arc<Stats>,
    pub activity: Arc<Activity>,
}

impl StatusReporter {
    /// Reports every `every`, until the task is aborted at shutdown.
    pub async fn run(self, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recent: VecDeque<HotInterval> = VecDeque::with_capacity(HOT_INTERVALS + 1);
        loop {
            ticker.tick().await;
            // Totals first, then the interval: the batch loop records a batch's activity
            // before its totals, so every order counted in these totals is also in this
            // interval's busiest products or an earlier one's. (The other way round, a
            // report could count a batch whose products only the next report names.)
            let totals = self.stats.totals();
            let interval = self.activity.take();
            // Only intervals with orders: an idle member's report carries its last busy ones.
            let products = interval.top_products(HOT_PRODUCTS);
            if !products.is_empty() {
                recent.push_back(HotInterval { until: Utc::now(), products });
                if recent.len() > HOT_INTERVALS {
                    recent.pop_front();
                }
            }
            let report = self.report(totals, &interval, recent.iter().cloned().collect());
            if let Err(error) = self.write(&report).await {
                if let Some(suppressed) = WRITE_ERRORS.allow("status report") {
                    tracing::warn!(error = %Chain(&error), suppressed, "could not write this consumer's status for the dashboard");
                }
            }
        }
    }

    pub fn report(&self, totals: Totals, interval: &Interval, hot_intervals: Vec<HotInterval>) -> MemberReport {
        let assigned: Vec<i32> = self
            .consumer
            .assignment()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        let mut problems: Vec<String> = self
            .gaps
            .open()
            .iter()
            .map(|gap| format!("partition {} stopped at a gap: offsets {}..{} ({} orders) are gone", gap.partition, gap.from, gap.to, gap.missing))
            .collect();
        if let Some(stuck) = self.stuck.current() {
            problems.push(format!("writes stuck since {} on {} orders: {}", stuck.since.to_rfc3339(), stuck.orders, stuck.error));
        }
        // Holds' ends (confirmed, cancelled, expired: by the sweeper too) and refused
        // commands, next to the placements' outcomes: the dashboard charts them all.
        let outcomes = [
            ("reserved", totals.reserved),
            ("rejected", totals.rejected),
            ("already_applied", totals.already_applied),
            ("confirmed", totals.confirmed),
            ("cancelled", totals.cancelled),
            ("expired", totals.expired),
            ("refused", totals.refused),
        ]
        .into_iter()
        .map(|(outcome, count)| (outcome.to_owned(), count))
        .collect();
        MemberReport {
            member_id: self.member.id.clone(),
            host: self.member.host.clone(),
            pid: self.member.pid,
            admin_port: self.member.admin_port,
            started_at: self.member.started_at,
            reported_at: Utc::now(),
            state: if self.control.is_paused() { "paused" } else { "running" }.to_owned(),
            ready: problems.is_empty(),
            problems,
            partitions: assigned.iter().map(|&partition| PartitionReport {
                    partition,
                    // librdkafka says -1 while it knows no committed offset or high watermark.
                    lag: self.control.lag(partition).filter(|lag| *lag >= 0),
                }).collect(),
            batch_size_avg: interval.average_batch(),
            batch_size_last: interval.last_batch,
            lock_conflicts: totals.lock_conflicts,
            dead_lettered: totals.failed,
            outcomes,
            hot_intervals,
            latency: interval.latency.clone(),
        }
    }

    /// Deletes this member's row at a graceful shutdown, so the dashboard lists it as gone
    /// only when it stopped reporting without leaving (a crash, a hang, a lost database).
    /// Best effort: if it fails, the row just ages into "gone".
    pub async fn withdraw(pool: &Pool, member_id: &str) {
        let delete = async {
            let client = pool.get().await?;
            client.execute("DELETE FROM consumer_status WHERE member_id = $1", &[&member_id]).await?;
            Ok::<_, ReportError>(())
        };
        match tokio::time::timeout(WRITE_TIMEOUT, delete).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %Chain(&error), "could not remove this consumer's status row"),
            Err(_) => tracing::warn!("removing this consumer's status row timed out"),
        }
    }

    async fn write(&self, report: &MemberReport) -> Result<(), ReportError> {
        let json = serde_json::to_value(report).expect("a plain struct serializes");
        let write = async {
            let client = self.pool.get().await?;
            let upsert = client.prepare_cached(UPSERT).await?;
            client.execute(&upsert, &[&report.member_id, &json]).await?;
            Ok(())
        };
        tokio::time::timeout(WRITE_TIMEOUT, write).await.map_err(|_| ReportError::TimedOut(WRITE_TIMEOUT))?
    }
}
