//! Request rate limits, per client IP and global, with governor's GCRA limiters.
//! The client IP is the TCP peer: behind a proxy every client shares the proxy's budget,
//! which is the safe default (X-Forwarded-For can be forged).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;
use crate::settings::LimitSettings;

pub struct RateLimits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    global: Option<DefaultDirectRateLimiter>,
}

impl RateLimits {
    pub fn new(settings: &LimitSettings) -> Self {
        // Burst equals one second's quota: a client may send a second's worth at once.
        let quota = |per_second: u32| NonZeroU32::new(per_second).map(Quota::per_second);
        Self {
            per_ip: quota(settings.per_ip_per_second).map(RateLimiter::keyed),
            global: quota(settings.global_per_second).map(RateLimiter::direct),
        }
    }

    fn check(&self, ip: Option<IpAddr>) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        if let (Some(limiter), Some(ip)) = (&self.per_ip, ip) {
            limiter.check_key(&ip).map_err(|denied| denied.wait_time_from(now))?;
        }
        if let Some(limiter) = &self.global {
            limiter.check().map_err(|denied| denied.wait_time_from(now))?;
        }
        Ok(())
    }

    /// Forgets idle clients so the per-IP table does not grow without bound.
    pub fn forget_idle_clients(&self) {
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Probes and scrapes are never limited: an overloaded API must still report its health.
fn is_exempt(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics" | "/openapi.json")
}

pub async fn enforce(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !is_exempt(request.path()) {
        if let Some(limits) = request.app_data::<web::Data<RateLimits>>() {
            let ip = request.peer_addr().map(|addr| addr.ip());
            if let Err(wait) = limits.check(ip) {
                let retry_after_secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                return Err(ApiError::RateLimited { retry_after_secs }.into());
            }
        }
    }
    next.call(request).await
}
