//! The live flash-sale dashboard: `GET /dashboard` serves the page, `GET /dashboard/events`
//! pushes one snapshot a second over server-sent events, `GET /dashboard/assets/{file}`
//! serves the chart library from its npm install (never committed, never from a CDN).
//! See ARCHITECTURE.md, "Dashboard".

pub mod collector;
pub mod snapshot;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use collector::{Published, Registration, RequestedProducts};
use snapshot::HistoryPoint;

pub use collector::{AcceptedCounter, Collector};

const PAGE: &str = include_str!("../../dashboard/index.html");

/// The library files the page loads, by the name the page asks for. Only these are served.
const ASSETS: [(&str, &str); 2] = [("uPlot.iife.min.js", "text/javascript; charset=utf-8"), ("uPlot.min.css", "text/css; charset=utf-8")];

/// Shared by the dashboard routes.
pub struct Dashboard {
    frames: watch::Receiver<Bytes>,
    history: Arc<Mutex<Vec<HistoryPoint>>>,
    requested: Arc<RequestedProducts>,
    assets_dir: PathBuf,
    /// Cancelled at shutdown, so open event streams end and do not hold the graceful
    /// shutdown for its whole grace period.
    shutdown: CancellationToken,
}

impl Dashboard {
    pub fn new(published: Published, requested: Arc<RequestedProducts>, assets_dir: PathBuf, shutdown: CancellationToken) -> Self {
        Self { frames: published.frames, history: published.history, requested, assets_dir, shutdown }
    }
}

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(crate::startup::resource("/dashboard", "GET").route(web::get().to(page)))
        .service(crate::startup::resource("/dashboard/events", "GET").route(web::get().to(events)))
        .service(crate::startup::resource("/dashboard/assets/{file}", "GET").route(web::get().to(asset)));
}

async fn page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").insert_header((header::CACHE_CONTROL, "no-cache")).body(PAGE)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Comma-separated product ids to show besides the busiest.
    products: Option<String>,
}

/// GET /dashboard/events: first the chart's history, then every snapshot as it is made.
async fn events(query: web::Query<EventsQuery>, dashboard: web::Data<Dashboard>) -> Result<HttpResponse, ApiError> {
    let products = snapshot::parse_products(query.products.as_deref()).map_err(ApiError::BadRequest)?;
    let mut frames = dashboard.frames.clone();
    let history = dashboard.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    let mut first = format!("event: history\ndata: {}\n\n", serde_json::to_string(&history).expect("plain data serializes")).into_bytes();
    first.extend_from_slice(&frames.borrow_and_update());
    let viewer = Viewer {
        first: Some(Bytes::from(first)),
        frames,
        shutdown: dashboard.shutdown.clone(),
        _registration: dashboard.requested.register(products),
    };
    let stream = futures::stream::unfold(viewer, |mut viewer| async move {
        if let Some(first) = viewer.first.take() {
            return Some((Ok::<_, std::convert::Infallible>(first), viewer));
        }
        loop {
            tokio::select! {
                _ = viewer.shutdown.cancelled() => return None,
                changed = viewer.frames.changed() => changed.ok()?,
            }
            let frame = viewer.frames.borrow_and_update().clone();
            if !frame.is_empty() {
                return Some((Ok(frame), viewer));
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Tells nginx-style proxies not to buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// One viewer's stream state; its registration withdraws its products when it is dropped.
struct Viewer {
    first: Option<Bytes>,
    frames: watch::Receiver<Bytes>,
    shutdown: CancellationToken,
    _registration: Registration,
}

/// GET /dashboard/assets/{file}: the chart library from DASHBOARD_ASSETS_DIR.
async fn asset(file: web::Path<String>, dashboard: web::Data<Dashboard>) -> Result<HttpResponse, ApiError> {
    let Some((name, content_type)) = ASSETS.iter().find(|(name, _)| *name == file.as_str()) else {
        return Err(ApiError::NotFound(format!("dashboard asset {file}")));
    };
    let path = dashboard.assets_dir.join(name);
    // std::fs on a blocking thread (what tokio::fs does), not on a Tokio worker.
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || std::fs::read(path)).await
    };
    match read.unwrap_or_else(|error| Err(std::io::Error::other(error))) {
        Ok(body) => Ok(HttpResponse::Ok().content_type(*content_type).insert_header((header::CACHE_CONTROL, "max-age=3600")).body(body)),
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "dashboard asset unreadable");
            Err(ApiError::NotFound(format!(
                "chart library file {} (install it with `npm ci` in producer/dashboard, or set DASHBOARD_ASSETS_DIR to uplot's dist directory)",
                path.display()
            )))
        }
    }
}

/// Whether the chart library is where the producer will look for it, for a warning at start.
pub fn assets_present(dir: &std::path::Path) -> bool {
    ASSETS.iter().all(|(name, _)| dir.join(name).is_file())
}
