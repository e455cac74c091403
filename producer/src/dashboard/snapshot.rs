//! The dashboard's snapshot, computed once a second whatever the number of viewers: what
//! the consumers reported (rates from their cumulative counters, stale members dropped),
//! this producer's accepted orders, and the inventory rows of the products shown.
//! Everything here is pure, so the rules are tested without a database.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use orderflow_common::member_report::{LatencyHistogram, MemberReport, PartitionReport};
use orderflow_common::order::validate_id;

/// A member whose last report is older than this is shown as gone, and counts no more.
pub const STALE_AFTER: Duration = Duration::from_secs(10);
/// Rows older than this are deleted: a gone member is listed as such for a minute.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);
/// One point per second: the rolling chart's last five minutes.
pub const HISTORY_POINTS: usize = 300;
/// How many of the busiest products the page shows.
pub const HOT_SHOWN: usize = 10;
/// The busiest are ranked over this window, so the bars stay a while after a sale stops.
pub const HOT_WINDOW: Duration = Duration::from_secs(60);
/// Product ids one viewer may ask for.
pub const MAX_REQUESTED_PER_CLIENT: usize = 20;

/// The outcomes the chart always has a line for; others reported by consumers are shown
/// too. `accepted` is this producer's own count.
/// `refused` counts commands (confirm or cancel) refused, not orders.
pub const CHART_SERIES: [&str; 7] = ["accepted", "reserved", "rejected", "confirmed", "cancelled", "expired", "refused"];

/// A row of `consumer_status`, with its age by the database's clock.
#[derive(Debug, Clone)]
pub struct StatusRow {
    pub report: MemberReport,
    pub age: Duration,
}

/// An inventory row of a product shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductView {
    pub product_id: String,
    pub product_name: String,
    pub available: i64,
    pub reserved: i64,
    /// On hand: available + reserved.
    pub total: i64,
    /// Confirmed holds' units.
    pub sold: i64,
    /// Everything ever received: total + sold, the bar's full width.
    pub received: i64,
    /// Orders for it in the last minute, by the consumers' reports.
    pub recent_orders: u64,
    pub hot: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsumerView {
    pub member_id: String,
    pub host: String,
    pub pid: u32,
    pub admin_port: u16,
    pub state: String,
    pub ready: bool,
    pub problems: Vec<String>,
    pub partitions: Vec<PartitionReport>,
    /// Sum of the partitions' lags; null while librdkafka has not reported any.
    pub lag: Option<i64>,
    pub batch_size_avg: f64,
    pub batch_size_last: u64,
    pub lock_conflicts: u64,
    pub dead_lettered: u64,
    pub rates: BTreeMap<String, f64>,
    pub latency: Latency,
    pub age_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GoneView {
    pub member_id: String,
    pub admin_port: u16,
    pub age_seconds: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub samples: u64,
}

impl From<&LatencyHistogram> for Latency {
    fn from(histogram: &LatencyHistogram) -> Self {
        Self { p50_ms: histogram.quantile(0.5), p99_ms: histogram.quantile(0.99), samples: histogram.count() }
    }
}

/// What every viewer gets each second.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub at: DateTime<Utc>,
    /// Orders per second by outcome; `accepted` is this producer's.
    pub rates: BTreeMap<String, f64>,
    /// Cumulative: outcomes summed over the live consumers (since each started), and
    /// `accepted` since this producer started.
    pub totals: BTreeMap<String, u64>,
    /// placed_at -> committed, over the consumers' last interval.
    pub latency: Latency,
    pub consumers: Vec<ConsumerView>,
    pub gone: Vec<GoneView>,
    pub products: Vec<ProductView>,
    pub dead_lettered: u64,
    pub lock_conflicts: u64,
    /// Anything /ready would report, per consumer, and the dashboard's own read errors.
    pub problems: Vec<String>,
}

/// One point of the rolling chart.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryPoint {
    /// Unix seconds.
    pub t: f64,
    pub rates: BTreeMap<String, f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// `?products=A,B`: comma-separated product ids, each valid as in an order, at most
/// `MAX_REQUESTED_PER_CLIENT`, duplicates dropped. Empty or missing means none.
pub fn parse_products(raw: Option<&str>) -> Result<Vec<String>, String> {
    let Some(raw) = raw.filter(|raw| !raw.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let mut products: Vec<String> = Vec::new();
    for (index, id) in raw.split(',').map(str::trim).enumerate() {
        validate_id(id).map_err(|rule| format!("products[{index}]: product id {rule}"))?;
        if !products.iter().any(|known| known == id) {
            products.push(id.to_owned());
        }
    }
    if products.len() > MAX_REQUESTED_PER_CLIENT {
        return Err(format!("at most {MAX_REQUESTED_PER_CLIENT} products can be watched, got {}", products.len()));
    }
    Ok(products)
}

/// What the tracker remembers of a member between ticks.
#[derive(Debug, Clone)]
struct Seen {
    reported_at: DateTime<Utc>,
    /// The end of the newest hot interval already counted from this member.
    hot_until: Option<DateTime<Utc>>,
    outcomes: BTreeMap<String, u64>,
    rates: BTreeMap<String, f64>,
}

/// State kept across ticks: each member's last counters, this producer's last accepted
/// count, the busiest products of the last minute and the chart's history.
#[derive(Debug, Default)]
pub struct Tracker {
    members: HashMap<String, Seen>,
    accepted: Option<(DateTime<Utc>, u64)>,
    accepted_rate: f64,
    hot: VecDeque<(DateTime<Utc>, Vec<(String, u64)>)>,
    history: VecDeque<HistoryPoint>,
}

/// The consumers' part of a snapshot, before the inventory rows are read.
#[derive(Debug, Clone)]
pub struct Observation {
    pub snapshot: Snapshot,
    /// The busiest products of the last minute with their orders, busiest first.
    pub hot: Vec<(String, u64)>,
}

impl Tracker {
    /// Takes one tick's rows and this producer's cumulative accepted count.
    pub fn observe(&mut self, now: DateTime<Utc>, rows: Vec<StatusRow>, accepted: u64) -> Observation {
        let (live, gone): (Vec<StatusRow>, Vec<StatusRow>) = rows.into_iter().partition(|row| row.age < STALE_AFTER);
        self.members.retain(|id, _| live.iter().any(|row| &row.report.member_id == id));

        let mut rates: BTreeMap<String, f64> = CHART_SERIES.iter().map(|s| ((*s).to_owned(), 0.0)).collect();
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        let mut latency = LatencyHistogram::default();
        let mut hot_now: Vec<(DateTime<Utc>, Vec<(String, u64)>)> = Vec::new();
        let mut consumers = Vec::with_capacity(live.len());
        let mut problems = Vec::new();
        for row in &live {
            let report = &row.report;
            let member_rates = self.member_rates(report);
            hot_now.extend(self.new_hot_intervals(report));
            for (outcome, rate) in &member_rates {
                *rates.entry(outcome.clone()).or_default() += rate;
            }
            for (outcome, count) in &report.outcomes {
                *totals.entry(outcome.clone()).or_default() += count;
            }
            latency.merge(&report.latency);
            problems.extend(report.problems.iter().map(|problem| format!("consumer {}: {problem}", report.member_id)));
            consumers.push(consumer_view(row, member_rates));
        }
        consumers.sort_by_key(|c| c.admin_port);
        let gone: Vec<GoneView> = gone
            .iter()
            .map(|row| GoneView { member_id: row.report.member_id.clone(), admin_port: row.report.admin_port, age_seconds: row.age.as_secs_f64() })
            .collect();
        problems.extend(gone.iter().map(|g| format!("consumer {} gone: no report for {:.0} s", g.member_id, g.age_seconds)));

        self.accepted_rate = match self.accepted {
            Some((at, before)) if now > at => accepted.saturating_sub(before) as f64 / seconds(now - at),
            Some(_) => self.accepted_rate,
            None => 0.0,
        };
        self.accepted = Some((now, accepted));
        rates.insert("accepted".to_owned(), self.accepted_rate);
        totals.insert("accepted".to_owned(), accepted);

        let hot = self.hot_products(now, hot_now);
        let latency = Latency::from(&latency);
        self.history.push_back(HistoryPoint {
            t: now.timestamp_millis() as f64 / 1000.0,
            rates: rates.clone(),
            p50_ms: latency.p50_ms,
            p99_ms: latency.p99_ms,
        });
        while self.history.len() > HISTORY_POINTS {
            self.history.pop_front();
        }
        let snapshot = Snapshot {
            at: now,
            dead_lettered: consumers.iter().map(|c| c.dead_lettered).sum(),
            lock_conflicts: consumers.iter().map(|c| c.lock_conflicts).sum(),
            rates,
            totals,
            latency,
            consumers,
            gone,
            products: Vec::new(),
            problems,
        };
        Observation { snapshot, hot }
    }

    pub fn history(&self) -> Vec<HistoryPoint> {
        self.history.iter().cloned().collect()
    }

    /// The member's hot intervals not counted yet, marked as counted. A report repeats its
    /// last few intervals, so none is lost when the member reported twice since the last
    /// tick, and none is counted twice when it did not report at all.
    fn new_hot_intervals(&mut self, report: &MemberReport) -> Vec<(DateTime<Utc>, Vec<(String, u64)>)> {
        let Some(seen) = self.members.get_mut(&report.member_id) else { return Vec::new() };
        let fresh: Vec<_> = report
            .hot_intervals
            .iter()
            .filter(|interval| seen.hot_until.is_none_or(|until| interval.until > until))
            .map(|interval| (interval.until, interval.products.clone()))
            .collect();
        if let Some((until, _)) = fresh.last() {
            seen.hot_until = Some(*until);
        }
        fresh
    }

    /// A member's rates per outcome.
    ///
    /// Rates come from the difference of cumulative counters over the member's own report
    /// times, so a report read twice (the producer ticked before the member wrote again)
    /// keeps its rates instead of showing a zero then a double. A member seen for the
    /// first time counts from its start if it started just now; otherwise (this producer
    /// just started) it has no baseline yet and shows 0 for one tick.
    fn member_rates(&mut self, report: &MemberReport) -> BTreeMap<String, f64> {
        let hot_until = self.members.get(&report.member_id).and_then(|seen| seen.hot_until);
        let rates = match self.members.get(&report.member_id) {
            Some(seen) if report.reported_at <= seen.reported_at => seen.rates.clone(),
            Some(seen) => {
                let elapsed = seconds(report.reported_at - seen.reported_at);
                report
                    .outcomes
                    .iter()
                    .map(|(outcome, count)| {
                        let before = seen.outcomes.get(outcome).copied().unwrap_or(0);
                        (outcome.clone(), count.saturating_sub(before) as f64 / elapsed)
                    })
                    .collect()
            }
            None => {
                let running = report.reported_at - report.started_at;
                if running <= chrono::Duration::from_std(STALE_AFTER).expect("small") {
                    let elapsed = seconds(running).max(1.0);
                    report.outcomes.iter().map(|(outcome, count)| (outcome.clone(), *count as f64 / elapsed)).collect()
                } else {
                    report.outcomes.keys().map(|outcome| (outcome.clone(), 0.0)).collect()
                }
            }
        };
        self.members.insert(
            report.member_id.clone(),
            Seen { reported_at: report.reported_at, hot_until, outcomes: report.outcomes.clone(), rates: rates.clone() },
        );
        rates
    }

    /// Adds the members' new hot intervals and ranks products over the last minute, by each
    /// interval's own end (members' clocks, as their rates use).
    fn hot_products(&mut self, now: DateTime<Utc>, fresh: Vec<(DateTime<Utc>, Vec<(String, u64)>)>) -> Vec<(String, u64)> {
        self.hot.extend(fresh);
        let window = chrono::Duration::from_std(HOT_WINDOW).expect("small");
        self.hot.retain(|(at, _)| now - *at <= window);
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for (_, products) in &self.hot {
            for (product, count) in products {
                *counts.entry(product.as_str()).or_default() += count;
            }
        }
        let mut ranked: Vec<(String, u64)> = counts.into_iter().map(|(p, c)| (p.to_owned(), c)).collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(HOT_SHOWN);
        ranked
    }
}

fn seconds(duration: chrono::Duration) -> f64 {
    (duration.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(1e-3)
}

fn consumer_view(row: &StatusRow, rates: BTreeMap<String, f64>) -> ConsumerView {
    let report = &row.report;
    let lags: Vec<i64> = report.partitions.iter().filter_map(|p| p.lag).collect();
    ConsumerView {
        member_id: report.member_id.clone(),
        host: report.host.clone(),
        pid: report.pid,
        admin_port: report.admin_port,
        state: report.state.clone(),
        ready: report.ready,
        problems: report.problems.clone(),
        partitions: report.partitions.clone(),
        lag: (!lags.is_empty()).then(|| lags.iter().sum()),
        batch_size_avg: report.batch_size_avg,
        batch_size_last: report.batch_size_last,
        lock_conflicts: report.lock_conflicts,
        dead_lettered: report.dead_lettered,
        rates,
        latency: Latency::from(&report.latency),
        age_seconds: row.age.as_secs_f64(),
    }
}

/// The products whose inventory rows are read: the busiest, then those viewers asked for.
pub fn products_to_read(hot: &[(String, u64)], requested: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = hot.iter().map(|(p, _)| p.clone()).collect();
    for id in requested {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_common::member_report::HotInterval;

    fn report(member: &str, started: DateTime<Utc>, at: DateTime<Utc>, reserved: u64, hot: &[(&str, u64)]) -> MemberReport {
        MemberReport {
            member_id: member.to_owned(),
            host: "h".into(),
            pid: 1,
            admin_port: 8081,
            started_at: started,
            reported_at: at,
            state: "running".into(),
            ready: true,
            problems: vec![],
            partitions: vec![PartitionReport { partition: 0, lag: Some(5) }, PartitionReport { partition: 1, lag: Some(7) }],
            batch_size_avg: 10.0,
            batch_size_last: 10,
            lock_conflicts: 0,
            dead_lettered: 0,
            outcomes: [("reserved".to_owned(), reserved), ("rejected".to_owned(), 0)].into(),
            latency: LatencyHistogram::default(),
            hot_intervals: if hot.is_empty() { vec![] } else { vec![interval(at, hot)] },
        }
    }

    fn interval(until: DateTime<Utc>, hot: &[(&str, u64)]) -> HotInterval {
        HotInterval { until, products: hot.iter().map(|(p, c)| ((*p).to_owned(), *c)).collect() }
    }

    fn row(report: MemberReport, age_s: u64) -> StatusRow {
        StatusRow { report, age: Duration::from_secs(age_s) }
    }

    #[test]
    fn rates_come_from_cumulative_counters_over_the_members_own_report_times() {
        let t0 = Utc::now();
        let started = t0 - chrono::Duration::hours(1);
        let s = chrono::Duration::seconds;
        let mut tracker = Tracker::default();
        // Seen first long after it started: no baseline, no spike of an hour's orders.
        let first = tracker.observe(t0, vec![row(report("a", started, t0, 1_000_000, &[]), 0)], 0);
        assert_eq!(first.snapshot.rates["reserved"], 0.0);
        assert_eq!(first.snapshot.totals["reserved"], 1_000_000);
        // 2000 more orders over 2 s of the member's clock: 1000/s.
        let second = tracker.observe(t0 + s(1), vec![row(report("a", started, t0 + s(2), 1_002_000, &[]), 0)], 500);
        assert_eq!(second.snapshot.rates["reserved"], 1000.0);
        // The same report read again: the rate holds, it does not drop to 0.
        let again = tracker.observe(t0 + s(2), vec![row(report("a", started, t0 + s(2), 1_002_000, &[]), 1)], 1500);
        assert_eq!(again.snapshot.rates["reserved"], 1000.0);
        assert_eq!(again.snapshot.rates["accepted"], 1000.0, "this producer's 1000 accepted in 1 s");
        // A series no consumer reports (here: a consumer from before holds) is on the chart at 0.
        assert_eq!(again.snapshot.rates["confirmed"], 0.0);
        // A member that just started counts from its start.
        let b = report("b", t0 + s(2), t0 + s(4), 400, &[]);
        let third = tracker.observe(t0 + s(3), vec![row(report("a", started, t0 + s(3), 1_003_000, &[]), 0), row(b, 0)], 1500);
        assert_eq!(third.snapshot.rates["reserved"], 1000.0 + 200.0);
        assert_eq!(third.snapshot.consumers.len(), 2);
        assert_eq!(third.snapshot.consumers[0].lag, Some(12));
        assert_eq!(tracker.history().len(), 4);
    }

    #[test]
    fn stale_members_are_dropped_from_the_rates_and_shown_as_gone() {
        let t0 = Utc::now();
        let mut tracker = Tracker::default();
        let mut live = report("live", t0, t0, 10, &[]);
        live.problems = vec!["writes stuck".into()];
        let stale = report("stale", t0, t0, 99_999, &[]);
        let observed = tracker.observe(t0, vec![row(live, 2), row(stale, 11)], 0);
        assert_eq!(observed.snapshot.consumers.len(), 1);
        assert_eq!(observed.snapshot.consumers[0].member_id, "live");
        assert_eq!(observed.snapshot.totals["reserved"], 10, "a gone member's counters no longer count");
        assert_eq!(observed.snapshot.gone.len(), 1);
        assert_eq!(observed.snapshot.gone[0].member_id, "stale");
        assert!(observed.snapshot.problems.iter().any(|p| p.contains("consumer live: writes stuck")), "{:?}", observed.snapshot.problems);
        assert!(observed.snapshot.problems.iter().any(|p| p.contains("consumer stale gone")), "{:?}", observed.snapshot.problems);
    }

    #[test]
    fn the_busiest_products_are_ranked_over_the_last_minute_and_counted_once_per_report() {
        let t0 = Utc::now();
        let started = t0 - chrono::Duration::hours(1);
        let s = chrono::Duration::seconds;
        let mut tracker = Tracker::default();
        tracker.observe(t0, vec![row(report("a", started, t0, 0, &[("P1", 50), ("P2", 10)]), 0)], 0);
        // Read again unchanged: not counted twice.
        tracker.observe(t0 + s(1), vec![row(report("a", started, t0, 0, &[("P1", 50), ("P2", 10)]), 1)], 0);
        let hot = tracker.observe(t0 + s(2), vec![row(report("a", started, t0 + s(2), 0, &[("P2", 45)]), 0)], 0).hot;
        assert_eq!(hot, vec![("P2".to_owned(), 55), ("P1".to_owned(), 50)]);
        // A minute later the sale is over and the list empties.
        let later = tracker.observe(t0 + s(70), vec![row(report("a", started, t0 + s(70), 0, &[]), 0)], 0).hot;
        assert!(later.is_empty(), "{later:?}");
        assert_eq!(products_to_read(&hot, &["P9".into(), "P1".into()]), ["P2", "P1", "P9"]);
    }

    #[test]
    fn a_report_the_dashboard_never_read_still_counts_its_busiest_products() {
        let t0 = Utc::now();
        let started = t0 - chrono::Duration::hours(1);
        let s = chrono::Duration::seconds;
        let mut tracker = Tracker::default();
        tracker.observe(t0, vec![row(report("a", started, t0, 0, &[("P1", 50)]), 0)], 0);
        // The member reported at t0+1 (P3 busy) and t0+2 (P2) before the next read: the read
        // sees only the second report, which repeats the intervals before it.
        let mut latest = report("a", started, t0 + s(2), 0, &[]);
        latest.hot_intervals = vec![interval(t0, &[("P1", 50)]), interval(t0 + s(1), &[("P3", 70)]), interval(t0 + s(2), &[("P2", 5)])];
        let hot = tracker.observe(t0 + s(2), vec![row(latest.clone(), 0)], 0).hot;
        assert_eq!(hot, vec![("P3".to_owned(), 70), ("P1".to_owned(), 50), ("P2".to_owned(), 5)], "P1 once, P3 not lost");
        // The same report read again, or an idle member repeating its last intervals: nothing new.
        let again = tracker.observe(t0 + s(3), vec![row(latest, 1)], 0).hot;
        assert_eq!(again, hot);
    }

    #[test]
    fn requested_products_are_validated_and_bounded() {
        assert_eq!(parse_products(None).unwrap(), Vec::<String>::new());
        assert_eq!(parse_products(Some("")).unwrap(), Vec::<String>::new());
        assert_eq!(parse_products(Some("PROD001, PROD002,PROD001")).unwrap(), ["PROD001", "PROD002"]);
        assert!(parse_products(Some("PROD001,,PROD002")).unwrap_err().contains("products[1]"));
        assert!(parse_products(Some(&"x".repeat(65))).unwrap_err().contains("64"));
        let many: Vec<String> = (0..21).map(|i| format!("P{i}")).collect();
        assert!(parse_products(Some(&many.join(","))).unwrap_err().contains("at most 20"));
        assert_eq!(parse_products(Some(&many[..20].join(","))).unwrap().len(), 20);
    }
}
