//! Peak resident memory of the producer and consumer during a run, sampled from /proc.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub struct PeakRss {
    peak_kib: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl PeakRss {
    /// Samples every 100 ms until `finish`. A missing pid samples nothing (reports 0).
    pub fn start(pid: Option<u32>) -> Self {
        let (peak_kib, stop) = (Arc::new(AtomicU64::new(0)), CancellationToken::new());
        if let Some(pid) = pid {
            let (peak, stop) = (peak_kib.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    if let Some(kib) = rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        Self { peak_kib, stop }
    }

    pub fn finish(self) -> f64 {
        self.stop.cancel();
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The pid recorded by scripts/up.sh, if that process is alive.
pub fn pid_from_file(path: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    std::path::Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}
