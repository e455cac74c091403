//! Building and running the consumer: migrations, the Kafka consumer, the batch loop and
//! the admin server, and the orderly shutdown of all of them.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use futures::FutureExt;
use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

use orderflow_common::db::{self, DbError};
use orderflow_common::errors::Chain;
use orderflow_common::kafka;
use orderflow_common::shutdown::termination_signal;

use crate::activity::Activity;
use crate::admin::{self, AdminState};
use crate::context::OrderflowContext;
use crate::dead_letters::DeadLetterQueue;
use crate::events::EventPublisher;
use crate::expiry::Sweeper;
use crate::fault;
use crate::outbox::Relay;
use crate::control::Control;
use crate::gaps::Gaps;
use orderflow_common::admin_auth::AdminToken;
use crate::offsets::ProcessedOffsets;
use crate::pipeline::{OrderConsumer, Pipeline};
use crate::protocol_trace::{self, Step};
use crate::settings::Settings;
use crate::stats::Stats;
use crate::status_report::{Member, StatusReporter};
use crate::stuck::StuckWrites;
use crate::supervision::{BoxError, RunError, Watched};
use crate::worker_pool::WorkerPool;

const STATS_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot create the Kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("cannot open the protocol trace file (ORDERFLOW_PROTOCOL_TRACE): {0}")]
    ProtocolTrace(#[source] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
}

pub struct Application {
    admin_port: u16,
    admin: Server,
    /// The batch loop, with the drain timer that abandons its last batch inside the same
    /// task: one task to watch, and the timer cannot die on its own.
    pipeline: Watched,
    gap_watcher: Watched,
    reporter: Watched,
    sweeper: Watched,
    relay: Watched,
    status_reporter: Watched,
    /// This member's status row, removed at a graceful shutdown.
    status_row: (deadpool_postgres::Pool, String),
    shutdown: CancellationToken,
    drain_timeout: Duration,
    stats: Arc<Stats>,
    consumer: Arc<OrderConsumer>,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        fault::arm_from_env();
        protocol_trace::init_from_env().map_err(StartupError::ProtocolTrace)?;
        let lifecycle = settings.holds.lifecycle();
        protocol_trace::record(|| Step::Started { default_hold_seconds: lifecycle.default_hold_seconds, events: lifecycle.events });
        let pool = db::pool(&settings.database)?;
        db::migrate(&pool).await?;

        let offsets = Arc::new(ProcessedOffsets::default());
        let control = Arc::new(Control::default());
        let gaps = Arc::new(Gaps::new(settings.kafka.topic.clone()));
        let consumer = Arc::new(create_consumer(&settings, offsets.clone(), control.clone(), gaps.clone())?);
        let stuck = Arc::new(StuckWrites::default());
        consumer.subscribe(&[&settings.kafka.topic])?;

        let stats = Arc::new(Stats::default());
        let listen = |source| StartupError::Listen { addr: settings.admin_listen, source };
        let listener = TcpListener::bind(settings.admin_listen).map_err(listen)?;
        let admin_port = listener.local_addr().map_err(listen)?.port();
        let state = web::Data::new(AdminState {
            control: control.clone(),
            gaps: gaps.clone(),
            offsets: offsets.clone(),
            stuck: stuck.clone(),
            token: AdminToken::new(settings.admin_token.clone()),
            consumer: consumer.clone(),
            pool: pool.clone(),
            stats: stats.clone(),
            topic: settings.kafka.topic.clone(),
            started: Instant::now(),
            metrics: orderflow_common::metrics::install(),
        });
        // Exported from the start, so "not stuck" is a series and not an absence.
        metrics::gauge!("consumer_writes_stuck").set(0.0);
        let admin = HttpServer::new(move || App::new().app_data(state.clone()).configure(admin::routes))
            .workers(1)
            .disable_signals()
            .listen(listener)
            .map_err(listen)?
            .run();

        let events = if lifecycle.events {
            Some(Arc::new(EventPublisher::new(&settings.kafka, &settings.holds.events_topic, stats.clone())?))
        } else {
            None
        };
        let relay = events.as_ref().map(|events| Arc::new(Relay::new(pool.clone(), events.clone())));
        let sweeper = Arc::new(Sweeper::new(pool.clone(), settings.holds.sweep(), lifecycle, relay.clone(), stats.clone()));
        let activity = Arc::new(Activity::default());
        let member = Member::this_process(admin_port);
        let status_row = (pool.clone(), member.id.clone());
        let status_reporter = StatusReporter {
            member,
            pool: pool.clone(),
            consumer: consumer.clone(),
            control: control.clone(),
            gaps: gaps.clone(),
            stuck: stuck.clone(),
            stats: stats.clone(),
            activity: activity.clone(),
        };
        let pipeline = Pipeline {
            dead_letters: Arc::new(DeadLetterQueue::new(&settings.kafka, &settings.dead_letter_topic)?),
            consumer: consumer.clone(),
            workers: Arc::new(
                WorkerPool::new(pool, settings.batch.workers as usize, stats.clone())
                    .with_permanent_errors(stuck, settings.batch.permanent_retry())
                    .with_adaptive_parts(settings.batch.adaptive_workers)
                    .with_lanes(settings.batch.lanes)
                    .with_conflict_backoff_max(Duration::from_millis(settings.batch.conflict_backoff_max_ms))
                    .with_lifecycle(lifecycle),
            ),
            offsets,
            gaps: gaps.clone(),
            stats: stats.clone(),
            activity,
            settings: settings.batch.clone(),
            topic: settings.kafka.topic.clone(),
            control,
            hold_after: settings.group.hold_after(),
            events,
            relay: relay.clone(),
        };
        let shutdown = CancellationToken::new();
        let gap_watcher = Watched::new(
            "gap watcher",
            tokio::spawn(gaps.clone().watch(pipeline.consumer.clone(), pipeline.control.clone(), shutdown.clone()).map(Ok)),
        );
        let drain_timeout = settings.batch.drain_timeout();
        let pipeline = Watched::new("batch loop", tokio::spawn(run_pipeline(pipeline, shutdown.clone(), drain_timeout)));
        let sweeper = Watched::new("expiry sweeper", tokio::spawn(sweeper.run(shutdown.clone()).map(Ok)));
        let relay = match relay {
            Some(relay) => {
                let every = std::time::Duration::from_millis(settings.holds.outbox_relay_interval_ms);
                Watched::new("outbox relay", tokio::spawn(relay.run(every, shutdown.clone()).map(Ok)))
            }
            // Events off: nothing to relay; a task that waits for shutdown keeps the
            // supervision uniform.
            None => {
                let shutdown = shutdown.clone();
                Watched::new("outbox relay", tokio::spawn(async move { shutdown.cancelled().await; Ok(()) }))
            }
        };
        let reporter = stats.clone();
        let reporter = Watched::new(
            "stats reporter",
            tokio::spawn(async move {
                reporter.report_every(STATS_INTERVAL).await;
                Ok(())
            }),
        );
        let status_every = Duration::from_millis(settings.status_report_ms);
        let status_reporter = Watched::new(
            "status reporter",
            tokio::spawn(async move {
                status_reporter.run(status_every).await;
                Ok(())
            }),
        );

        tracing::info!(
            admin_port,
            topic = %settings.kafka.topic,
            group = %settings.group.group_id,
            workers = settings.batch.workers,
            batch_size = settings.batch.max_messages,
            "consumer started"
        );
        Ok(Self { admin_port, admin, pipeline, gap_watcher, reporter, sweeper, relay, status_reporter, status_row, shutdown, drain_timeout, stats, consumer })
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Cancelling this token stops the consumer as SIGTERM does.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Test hook, not for production code: the Kafka consumer, so a test can inject
    /// librdkafka's own faults (`rd_kafka_test_fatal_error`) into the real batch loop.
    #[doc(hidden)]
    pub fn kafka_consumer(&self) -> Arc<OrderConsumer> {
        self.consumer.clone()
    }

    /// Runs until SIGTERM, Ctrl-C or the shutdown token; then stops fetching, finishes the
    /// batch in hand, commits its offsets and stops the admin server.
    ///
    /// If any watched task (the batch loop, the gap watcher, the admin server, the stats
    /// reporter, the expiry sweeper, the outbox relay or the status reporter) ends first,
    /// that is a failure: the others are shut down the same way and the error names the task and why,
    /// so that `main` exits non-zero and the orchestrator restarts a consumer that would
    /// otherwise answer /health while consuming nothing.
    pub async fn run_until_stopped(self) -> Result<(), RunError> {
        let Self { admin, mut pipeline, mut gap_watcher, mut reporter, mut sweeper, mut relay, mut status_reporter, status_row, shutdown, drain_timeout, .. } = self;
        let admin_handle = admin.handle();
        let mut admin = Watched::new("admin server", tokio::spawn(async move { admin.await.map_err(BoxError::from) }));
        // Biased: the gap watcher returns as soon as it sees the token, so at shutdown both
        // arms can be ready, and only the token says the stop was asked for.
        let mut failure = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            _ = termination_signal() => {
                tracing::info!(drain_timeout_ms = drain_timeout.as_millis() as u64, "shutdown requested");
                None
            }
            exit = pipeline.exited() => RunError::from_exit("batch loop", exit, false),
            exit = admin.exited() => RunError::from_exit("admin server", exit, false),
            exit = gap_watcher.exited() => RunError::from_exit("gap watcher", exit, false),
            exit = reporter.exited() => RunError::from_exit("stats reporter", exit, false),
            exit = sweeper.exited() => RunError::from_exit("expiry sweeper", exit, false),
            exit = relay.exited() => RunError::from_exit("outbox relay", exit, false),
            exit = status_reporter.exited() => RunError::from_exit("status reporter", exit, false),
        };
        if let Some(error) = &failure {
            tracing::error!(error = %Chain(error), "a consumer task ended unexpectedly; shutting down");
        }
        shutdown.cancel();
        // The way out if the shutdown itself hangs: a second SIGTERM or Ctrl-C ends the
        // process at once. Nothing is lost: offsets are committed only after PostgreSQL, so
        // whatever this skips is redelivered and re-applied idempotently.
        tokio::spawn(async {
            termination_signal().await;
            tracing::error!("second termination signal during shutdown: exiting now, without finishing it");
            std::process::exit(130);
        });
        if pipeline.is_running() {
            if let Some(error) = RunError::from_exit(pipeline.name, pipeline.exited().await, true) {
                tracing::error!(error = %Chain(&error), "batch loop failed during shutdown");
                failure.get_or_insert(error);
            }
        }
        reporter.abort();
        status_reporter.abort();
        if status_reporter.is_running() {
            // Wait until it is really gone, so no write of its lands after the delete below.
            let _ = status_reporter.exited().await;
        }
        if failure.is_none() {
            StatusReporter::withdraw(&status_row.0, &status_row.1).await;
        }
        gap_watcher.abort();
        // Both stop at the token; an expiry or relay cut short rolls back and is redone by
        // the next sweep, here or in another consumer.
        sweeper.abort();
        relay.abort();
        admin_handle.stop(true).await;
        if admin.is_running() {
            if let Some(error) = RunError::from_exit(admin.name, admin.exited().await, true) {
                failure.get_or_insert(error);
            }
        }
        match failure {
            Some(error) => Err(error),
            None => {
                tracing::info!("consumer stopped");
                Ok(())
            }
        }
    }
}

/// The batch loop, plus the drain deadline: once shutdown starts, the batch in hand has
/// `drain_timeout` before it is abandoned (uncommitted, so redelivered).
async fn run_pipeline(pipeline: Pipeline, shutdown: CancellationToken, drain_timeout: Duration) -> Result<(), BoxError> {
    let abandon = CancellationToken::new();
    let timer = {
        let (shutdown, abandon) = (shutdown.clone(), abandon.clone());
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(drain_timeout).await;
            abandon.cancel();
            std::future::pending::<std::convert::Infallible>().await
        }
    };
    tokio::select! {
        result = pipeline.run(shutdown, abandon) => result.map_err(BoxError::from),
        never = timer => match never {},
    }
}

fn create_consumer(
    settings: &Settings,
    offsets: Arc<ProcessedOffsets>,
    control: Arc<Control>,
    gaps: Arc<Gaps>,
) -> Result<OrderConsumer, rdkafka::error::KafkaError> {
    let mut config = kafka::client_config(&settings.kafka);
    config
        .set("group.id", &settings.group.group_id)
        .set("group.protocol", &settings.group.protocol)
        // Offsets are committed by hand, only after the database commit.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Never skip offsets silently: a start offset that is no longer in the log (deleted
        // by retention before it was consumed) stops its partition with an error, and
        // gaps.rs reports it until an operator acknowledges it. A new group's partition
        // whose log still starts at 0 is started at 0 there: orders accepted before the
        // first consumer started are still orders.
        .set("auto.offset.reset", "error")
        // Bounds the prefetch buffer, and so the consumer's memory.
        .set("queued.max.messages.kbytes", "32768")
        // The dev broker parks a fetch for this long even when data arrives, so it bounds
        // latency directly: 100 ms gave p99 139 ms at half load, 10 ms gave 61 ms.
        .set("fetch.wait.max.ms", settings.batch.fetch_wait_max_ms.to_string())
        // Feeds the consumer_lag gauges (see context.rs).
        .set("statistics.interval.ms", "5000")
        // Set here so that the batch loop knows it (see `GroupSettings::hold_after`).
        .set("max.poll.interval.ms", settings.group.max_poll_interval_ms.to_string());
    if settings.group.protocol == "classic" {
        config
            .set("session.timeout.ms", settings.group.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (settings.group.session_timeout_ms / 4).max(100).to_string())
            // Incremental rebalances: members keep the partitions that do not move.
            .set("partition.assignment.strategy", "cooperative-sticky");
    }
    kafka::apply_overrides(&mut config, &settings.kafka);
    config.create_with_context(OrderflowContext { topic: settings.kafka.topic.clone(), offsets, control, gaps })
}
