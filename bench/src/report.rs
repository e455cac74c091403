//! The benchmark's results: JSON for machines, a Markdown table for people, one summary
//! line per workload.

use std::fmt::Write as _;

use serde::Serialize;

use crate::measure::{Checks, Outcome};

#[derive(Debug, Serialize)]
pub struct Report {
    pub started_at: String,
    pub command: String,
    /// Every product of the run is named `BENCH-<run_id>-<step>-...`.
    pub run_id: String,
    pub machine: Machine,
    pub runs: Vec<Run>,
    pub references: Vec<Reference>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub name: String,
    pub orders: usize,
    /// Order lines: equal to `orders` for single-line workloads, about 3x for carts.
    pub lines: usize,
    /// Lines finalized per second end to end (orders/s times lines per order).
    pub lines_per_second: f64,
    pub batch_size: usize,
    pub clients: usize,
    pub offered_rate: Option<f64>,
    pub accepted_per_second: f64,
    pub failed_orders: usize,
    pub outcome: Outcome,
    pub checks: Checks,
    pub producer_peak_rss_mib: f64,
    pub consumer_peak_rss_mib: f64,
    /// The consumer group's counters over the run.
    pub consumers: crate::consumers::Breakdown,
    /// CPU microseconds per order of each component over the run (from /proc).
    pub cpu_us_per_order: std::collections::BTreeMap<String, f64>,
    /// The checkout workload's commands and expiries.
    pub checkout: Option<crate::checkout::CheckoutOutcome>,
}

#[derive(Debug, Serialize)]
pub struct Reference {
    pub name: String,
    pub orders: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub checks_passed: bool,
    pub timeline: Vec<(f64, i64)>,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name").map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned()))
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self { cores: std::thread::available_parallelism().map_or(1, usize::from), cpu, memory_gib: kib / 1024.0 / 1024.0 }
    }
}

impl Report {
    fn reference(&self, prefix: &str) -> Option<&Reference> {
        self.references.iter().find(|r| r.name.starts_with(prefix))
    }

    /// One line per run: end-to-end rate and its ratios to the two references.
    pub fn summary(&self) -> Vec<String> {
        let per_order = self.reference("per-order").map(|r| r.per_second);
        let ceiling = self.reference("set-based").map(|r| r.per_second);
        self.runs
            .iter()
            .map(|run| {
                let e2e = run.outcome.end_to_end_per_second;
                let ratio = |reference: Option<f64>| reference.map_or("n/a".to_owned(), |r| format!("{:.2}x", e2e / r));
                let lines = if run.lines == run.orders { String::new() } else { format!(" ({:.0} lines/s)", run.lines_per_second) };
                format!(
                    "{}: {:.0} orders/s end-to-end{lines}, {:.0}/s accepted, p99 {:.0} ms; vs per-order design {}, vs database ceiling {}; checks {}",
                    run.name,
                    e2e,
                    run.accepted_per_second,
                    run.outcome.latency.p99_ms,
                    ratio(per_order),
                    ratio(ceiling),
                    if run.checks.passed() { "passed" } else { "FAILED" }
                )
            })
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "Measured {} on {} cores ({}), {:.0} GiB, everything on one machine.", self.started_at, m.cores, m.cpu, m.memory_gib);
        let _ = writeln!(out, "Command: `{}`; products `BENCH-{}-*`\n", self.command, self.run_id);
        let _ = writeln!(
            out,
            "| run | orders | lines | accepted/s | end-to-end/s | lines/s | p50 ms | p95 ms | p99 ms | max ms | reserved | rejected | producer RSS MiB | consumer RSS MiB | exactly once, no oversell |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for run in &self.runs {
            let o = &run.outcome;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {:.0} | {:.0} | {} |",
                run.name,
                run.orders,
                run.lines,
                run.accepted_per_second,
                o.end_to_end_per_second,
                run.lines_per_second,
                o.latency.p50_ms,
                o.latency.p95_ms,
                o.latency.p99_ms,
                o.latency.max_ms,
                o.reserved,
                o.rejected,
                run.producer_peak_rss_mib,
                run.consumer_peak_rss_mib,
                if run.checks.passed() { "yes".to_owned() } else { format!("NO: {:?}", run.checks) }
            );
        }
        for reference in &self.references {
            let _ = writeln!(
                out,
                "| {} | {} | | | {:.0} | | | | | | | | | | {} |",
                reference.name,
                reference.orders,
                reference.per_second,
                if reference.checks_passed { "yes" } else { "NO" }
            );
        }
        out.push('\n');
        for run in &self.runs {
            let Some(c) = &run.checkout else { continue };
            let _ = writeln!(out, "Checkout ({}): {} holds; {} confirms and {} cancels sent at {:.0} commands/s ({} failed); {} left to expire.\n", run.name, c.reserved, c.confirms_sent, c.cancels_sent, c.commands_per_second, c.failed_commands, c.left_to_expire);
            let _ = writeln!(out, "| kind | count | p50 ms | p95 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|");
            for (kind, count, l) in [("confirmed (issued -> committed)", c.confirmed, &c.confirm_latency), ("cancelled (issued -> committed)", c.cancelled, &c.cancel_latency), ("expired (expires_at -> released)", c.expired, &c.expiry_lateness)] {
                let _ = writeln!(out, "| {kind} | {count} | {:.1} | {:.1} | {:.1} | {:.1} |", l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms);
            }
            let _ = writeln!(out, "\nRefused commands: {}. Sold = confirmed units, nothing reserved, available + sold = stock: {}.\n", c.refused, if c.checks_passed { "yes" } else { "NO" });
        }
        let _ = writeln!(out, "Where the consumers' time went (counters summed over the group, over each run):\n");
        let _ = writeln!(out, "| run | consumers | batches | mean batch | mean batch ms | lock conflicts | conflict backoff s | backoff s per batch s |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for run in &self.runs {
            let b = &run.consumers;
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.2} | {:.3} |",
                run.name, b.consumers, b.counters.batches, b.mean_batch_size, b.mean_batch_ms, b.counters.lock_conflicts, b.counters.backoff_seconds, b.backoff_share
            );
        }
        out.push('\n');
        let _ = writeln!(out, "CPU per order, microseconds (user + system, from /proc; postgres = the backends of this database):\n");
        let components: std::collections::BTreeSet<&String> = self.runs.iter().flat_map(|run| run.cpu_us_per_order.keys()).collect();
        let _ = writeln!(out, "| run | {} | total |", components.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(out, "|---|{}---:|", "---:|".repeat(components.len()));
        for run in &self.runs {
            let cells: Vec<String> = components.iter().map(|c| format!("{:.1}", run.cpu_us_per_order.get(*c).copied().unwrap_or(0.0))).collect();
            let _ = writeln!(out, "| {} | {} | {:.1} |", run.name, cells.join(" | "), run.cpu_us_per_order.values().sum::<f64>());
        }
        out.push('\n');
        for line in self.summary() {
            let _ = writeln!(out, "- {line}");
        }
        out
    }
}
