//! CPU time per component over a run, from /proc: what one order costs each process, which
//! is what the scaling simulation (`scale-sim`) is calibrated with. CPU time, unlike a rate,
//! hardly changes when the machine is shared, so it can be measured on a busy machine too.

use std::collections::BTreeMap;
use std::path::Path;

/// Seconds of CPU (user + system) per component.
pub type CpuTimes = BTreeMap<String, f64>;

/// USER_HZ: /proc reports times in these ticks; Linux fixes it at 100 on every architecture
/// this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// Samples the local stack's processes: the producer and every consumer from the pid files
/// of `scripts/up.sh`, the broker, the PostgreSQL backends connected to `database`, and this
/// load generator. Backends of other databases (tests running beside) are not counted.
pub fn sample(pid_dir: &Path, database: &str) -> CpuTimes {
    let mut times = CpuTimes::new();
    let Ok(entries) = std::fs::read_dir(pid_dir) else { return times };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().trim_end_matches(".pid").to_owned();
        let component = match name.as_str() {
            "producer" => "producer",
            name if name.starts_with("consumer") => "consumer",
            "dev-broker" | "tansu" | "broker" => "broker",
            _ => continue,
        };
        let Some(pid) = std::fs::read_to_string(entry.path()).ok().and_then(|text| text.trim().parse::<u32>().ok()) else { continue };
        if let Some(seconds) = cpu_seconds(pid) {
            *times.entry(component.to_owned()).or_default() += seconds;
        }
    }
    let backend = format!(" {database} ");
    for pid in postgres_pids() {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " ");
        if cmdline.contains(&backend) {
            if let Some(seconds) = cpu_seconds(pid) {
                *times.entry("postgres".to_owned()).or_default() += seconds;
            }
        }
    }
    if let Some(seconds) = cpu_seconds(std::process::id()) {
        times.insert("loadgen".to_owned(), seconds);
    }
    times
}

/// Microseconds of CPU per order, per component, between two samples.
pub fn per_order(before: &CpuTimes, after: &CpuTimes, orders: usize) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(component, seconds)| {
            let used = seconds - before.get(component).copied().unwrap_or(0.0);
            (component.clone(), used * 1e6 / orders.max(1) as f64)
        })
        .collect()
}

fn postgres_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres"))
        .collect()
}

/// utime + stime of one process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Fields 14 and 15 of /proc/<pid>/stat; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its closing parenthesis.
fn parse_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_time_past_an_odd_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 1000 100";
        assert_eq!(parse_stat(stat), Some(3.0));
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn per_order_is_the_difference_over_the_orders() {
        let before = CpuTimes::from([("producer".to_owned(), 1.0)]);
        let after = CpuTimes::from([("producer".to_owned(), 3.0), ("postgres".to_owned(), 1.0)]);
        let cost = per_order(&before, &after, 200_000);
        assert_eq!(cost["producer"], 10.0);
        assert_eq!(cost["postgres"], 5.0);
    }
}
