//! Building and running the API: `Application::build` binds the port (0 for tests) and
//! wires the shared producer, pool and limits into the routes.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use orderflow_common::admin_auth::AdminToken;
use orderflow_common::db::{self, DbError};
use orderflow_common::shutdown::termination_signal;
use tokio_util::sync::CancellationToken;

use crate::dashboard::{self, AcceptedCounter, Collector, Dashboard};
use crate::error::{self, ApiError};
use crate::publisher::OrderPublisher;
use crate::http_metrics;
use crate::idempotency;
use crate::rate_limit::{self, RateLimits};
use crate::routes;
use crate::settings::Settings;

/// How long in-flight requests get to finish after SIGTERM; they are waiting for broker
/// acknowledgements, which the publish timeout bounds.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot create the Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
}

pub struct Application {
    port: u16,
    server: Server,
    publisher: Arc<OrderPublisher>,
    shutdown: CancellationToken,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let publisher = Arc::new(OrderPublisher::new(&settings.kafka, &settings.publish)?);
        // The pool connects lazily: the API starts (and /ready reports) while PostgreSQL is down.
        let pool = db::pool(&settings.database)?;
        idempotency::spawn_expiry(pool.clone(), Duration::from_secs(settings.idempotency_ttl_hours * 3600));
        let limits = web::Data::new(RateLimits::new(&settings.limits));
        let accepted = Arc::new(AcceptedCounter::default());
        let requested = Arc::default();
        let published = Collector {
            pool: pool.clone(),
            accepted: accepted.clone(),
            requested: Arc::clone(&requested),
            every: Duration::from_millis(settings.dashboard.refresh_ms),
        }
        .spawn();
        if !dashboard::assets_present(&settings.dashboard.assets_dir) {
            tracing::warn!(
                dir = %settings.dashboard.assets_dir.display(),
                "the dashboard's chart library is not installed there; the page works but shows no chart (run `npm ci` in producer/dashboard)"
            );
        }
        let shutdown = CancellationToken::new();
        let dashboard = web::Data::new(Dashboard::new(published, requested, settings.dashboard.assets_dir.clone(), shutdown.clone()));
        let accepted = web::Data::from(accepted);
        spawn_limiter_cleanup(limits.clone());

        let listen = |source| StartupError::Listen { addr: settings.listen, source };
        let listener = TcpListener::bind(settings.listen).map_err(listen)?;
        let port = listener.local_addr().map_err(listen)?.port();

        let metrics = web::Data::new(orderflow_common::metrics::install());
        let publisher_data = web::Data::from(publisher.clone());
        let pool = web::Data::new(pool);
        let limit_settings = settings.limits.clone();
        let admin_token = web::Data::new(AdminToken::new(settings.admin_token.clone()));
        let server = HttpServer::new(move || {
            let order_json = web::JsonConfig::default()
                .limit(limit_settings.max_order_bytes)
                .content_type_required(false)
                .error_handler(error::json_error(limit_settings.max_order_bytes));
            let batch_json = web::JsonConfig::default()
                .limit(limit_settings.max_batch_bytes)
                .content_type_required(false)
                .error_handler(error::json_error(limit_settings.max_batch_bytes));
            App::new()
                .wrap(from_fn(rate_limit::enforce))
                // Outermost, so rate-limited requests are counted too.
                .wrap(from_fn(http_metrics::record))
                .app_data(metrics.clone())
                .app_data(publisher_data.clone())
                .app_data(pool.clone())
                .app_data(limits.clone())
                .app_data(admin_token.clone())
                .app_data(dashboard.clone())
                .app_data(accepted.clone())
                .app_data(web::PathConfig::default().error_handler(error::path_error))
                .app_data(web::QueryConfig::default().error_handler(error::query_error))
                .app_data(
                    web::JsonConfig::default()
                        .limit(limit_settings.max_order_bytes)
                        .content_type_required(false)
                        .error_handler(error::json_error(limit_settings.max_order_bytes)),
                )
                .service(with_json(resource("/order", "POST").route(web::post().to(routes::place_order)), order_json))
                .service(with_json(resource("/orders/batch", "POST").route(web::post().to(routes::place_batch)), batch_json))
                .service(resource("/orders/{order_id}", "GET").route(web::get().to(routes::get_order)))
                .service(resource("/orders/{order_id}/confirm", "POST").route(web::post().to(routes::confirm_order)))
                .service(resource("/orders/{order_id}/cancel", "POST").route(web::post().to(routes::cancel_order)))
                .service(resource("/inventory/{product_id}", "GET").route(web::get().to(routes::get_inventory)))
                .service(resource("/admin/products", "POST").route(web::post().to(routes::create_product)))
                .service(resource("/admin/products/{product_id}/restock", "POST").route(web::post().to(routes::restock)))
                .service(resource("/admin/inventory", "GET").route(web::get().to(routes::list_inventory)))
                .service(resource("/health", "GET").route(web::get().to(routes::health)))
                .service(resource("/ready", "GET").route(web::get().to(routes::ready)))
                .service(resource("/metrics", "GET").route(web::get().to(routes::metrics)))
                .service(resource("/openapi.json", "GET").route(web::get().to(crate::openapi::openapi_json)))
                .configure(dashboard::routes)
                .default_service(web::to(not_found))
        })
        .listen(listener)
        .map_err(listen)?
        // Slow or half-open clients must not hold connections forever.
        .client_request_timeout(Duration::from_millis(settings.limits.client_header_timeout_ms))
        .client_disconnect_timeout(Duration::from_secs(2))
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        // Signals are handled in run_until_stopped, which ends the dashboard's event streams
        // first: actix's own handler would wait the whole grace period for them.
        .disable_signals()
        .run();
        tracing::info!(port, topic = %settings.kafka.topic, brokers = %settings.kafka.brokers, "producer listening");
        Ok(Self { port, server, publisher, shutdown })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or Ctrl-C, lets in-flight requests finish, then flushes Kafka.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            termination_signal().await;
            tracing::info!("shutdown requested");
            shutdown.cancel();
            handle.stop(true).await;
        });
        let result = self.server.await;
        let publisher = self.publisher;
        let _ = tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(10))).await;
        tracing::info!("producer stopped");
        result
    }
}

fn spawn_limiter_cleanup(limits: web::Data<RateLimits>) {
    tokio::spawn(async move {
        let mut every_minute = tokio::time::interval(Duration::from_secs(60));
        loop {
            every_minute.tick().await;
            limits.forget_idle_clients();
        }
    });
}

async fn not_found(request: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!("route {} {}", request.method(), request.path())))
}

/// A route whose other methods answer 405 with an Allow header.
pub(crate) fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        Err::<actix_web::HttpResponse, _>(ApiError::MethodNotAllowed { allow })
    }))
}

fn with_json(resource: actix_web::Resource, config: web::JsonConfig) -> actix_web::Resource {
    resource.app_data(config)
}
