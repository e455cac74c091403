//! Logging set-up: `RUST_LOG` filters, `LOG_FORMAT=json` switches to one JSON object per line.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,actix_server=warn"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    // try_init: tests start several apps in one process and only the first may install it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        // The current span carries order_id (producer) into every event logged while handling it.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
    };
}
