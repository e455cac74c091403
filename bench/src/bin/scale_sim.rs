//! `scale-sim`: a time-stepped simulation of the consumer group on a flash sale, to say what
//! consumer count, core count and the partitioning key do to end-to-end throughput, where
//! measuring is not possible (this machine has two cores).
//!
//! What it models, and nothing more:
//! - a fixed number of orders, each for one of `hot` products, keyed to a partition by
//!   customer (uniform) or by product;
//! - "ingest" CPU per order before a consumer can see it (load generator, API, broker,
//!   the consumer's parsing), done by `ingest_streams` parallel jobs (the HTTP clients);
//! - consumers that own partitions round-robin, take up to `batch_max` waiting orders once
//!   `max_wait` has passed since the previous batch started (the pipelined loop), split the
//!   batch by product over `workers` parts (busiest product into the lightest part, as
//!   `worker_pool::split_by_product` does), and write each part as one transaction;
//! - a transaction locks its products with NOWAIT: a product held by another consumer's
//!   transaction is a conflict, retried after exponential backoff with full jitter (2 ms base,
//!   250 ms cap, as `worker_pool::backoff`); a held transaction costs `txn_cpu_us +
//!   order_cpu_us * n` of CPU, then `txn_wait_us` without CPU (commit flush, round trips);
//! - with `--lane-locks`, consumers of a group (2 or more) split by lane instead
//!   (`split::lane` of the product's id, as the consumer does while contended), and a part
//!   waits in a first-come queue for its lane, as for the consumer's advisory lane lock,
//!   instead of failing NOWAIT and backing off;
//! - every CPU job shares `cores` equally (processor sharing).
//!
//! Calibrate the per-order and per-transaction costs from a measured run with one consumer
//! (README, Performance), check the model against the measured 2- and 4-consumer runs, and
//! only then read its extrapolations.

use std::collections::{HashMap, VecDeque};

use orderflow_consumer::split::lane;

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Parser)]
#[command(about = "simulate consumer scaling on a flash sale")]
struct Params {
    #[arg(long, default_value_t = 2.0)]
    cores: f64,
    /// Consumer counts to simulate, each in turn.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4])]
    consumers: Vec<usize>,
    #[arg(long, default_value_t = 4)]
    workers: usize,
    #[arg(long, default_value_t = 10)]
    hot: usize,
    #[arg(long, default_value_t = 12)]
    partitions: usize,
    /// Partition by product instead of by customer.
    #[arg(long)]
    by_product: bool,
    /// Lanes and lane locks (consumer LANES=true) for groups of two or more consumers.
    #[arg(long)]
    lane_locks: bool,
    #[arg(long, default_value_t = 200_000)]
    orders: usize,
    #[arg(long, default_value_t = 10_000)]
    batch_max: usize,
    #[arg(long, default_value_t = 20_000.0)]
    max_wait_us: f64,
    /// CPU per order outside the database: load generator, API, broker, consumer parsing.
    #[arg(long, default_value_t = 10.0)]
    ingest_us: f64,
    #[arg(long, default_value_t = 8)]
    ingest_streams: usize,
    /// Database CPU per transaction, whatever its size.
    #[arg(long, default_value_t = 300.0)]
    txn_cpu_us: f64,
    /// Time per transaction that needs no CPU (commit flush, round trips).
    #[arg(long, default_value_t = 1_000.0)]
    txn_wait_us: f64,
    /// Database CPU per order in a transaction.
    #[arg(long, default_value_t = 6.0)]
    order_cpu_us: f64,
    #[arg(long, default_value_t = 20.0)]
    dt_us: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PartState {
    /// Waiting to (re)try its locks at this time.
    Trying {
        at: f64,
        attempt: u32,
    },
    Holding {
        cpu_left: f64,
        wait_left: f64,
    },
    Done,
}

#[derive(Debug, Clone)]
struct Part {
    products: Vec<usize>,
    orders: u64,
    state: PartState,
    /// With lane locks: the part's lane, and whether it is in that lane's queue.
    lane: Option<usize>,
    queued: bool,
}

#[derive(Debug, Clone, Default)]
struct Consumer {
    partitions: Vec<usize>,
    parts: Vec<Part>,
    /// When the batch now being written started: the next one is collected meanwhile.
    started: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Outcome {
    seconds: f64,
    per_second: f64,
    batches: u64,
    transactions: u64,
    conflicts: u64,
    mean_batch: f64,
}

fn simulate(p: &Params, consumers: usize) -> Outcome {
    let mut rng = StdRng::seed_from_u64(p.seed);
    // backlog[partition][product]
    let mut backlog = vec![vec![0_u64; p.hot]; p.partitions];
    let mut group: Vec<Consumer> = (0..consumers)
        .map(|c| Consumer {
            partitions: (0..p.partitions).filter(|x| x % consumers == c).collect(),
            ..Consumer::default()
        })
        .collect();
    let mut locks: HashMap<usize, usize> = HashMap::new();
    let lanes = consumers > 1 && p.lane_locks;
    // Per lane: the parts waiting, first come first served, as (consumer, part index).
    let mut lane_queues: Vec<VecDeque<(usize, usize)>> = vec![VecDeque::new(); p.workers];
    let mut lane_held = vec![false; p.workers];
    let (mut produced, mut ingest_credit, mut committed) = (0_usize, 0.0_f64, 0_u64);
    let mut out = Outcome::default();
    let mut now = 0.0_f64;
    while (committed as usize) < p.orders {
        now += p.dt_us;
        anyhow_guard(now);
        // Processor sharing over every job that wants CPU now.
        let ingesting = produced < p.orders;
        let holding_cpu = group
            .iter()
            .flat_map(|c| &c.parts)
            .filter(
                |part| matches!(part.state, PartState::Holding { cpu_left, .. } if cpu_left > 0.0),
            )
            .count();
        let jobs = holding_cpu + if ingesting { p.ingest_streams } else { 0 };
        let share = if jobs == 0 {
            0.0
        } else {
            (p.cores / jobs as f64).min(1.0) * p.dt_us
        };
        if ingesting {
            ingest_credit += share * p.ingest_streams as f64 / p.ingest_us;
            while ingest_credit >= 1.0 && produced < p.orders {
                ingest_credit -= 1.0;
                produced += 1;
                let product = rng.random_range(0..p.hot);
                let partition = if p.by_product {
                    product % p.partitions
                } else {
                    rng.random_range(0..p.partitions)
                };
                backlog[partition][product] += 1;
            }
        }
        for (id, consumer) in group.iter_mut().enumerate() {
            // Parts: try locks, hold them, finish.
            for (index, part) in consumer.parts.iter_mut().enumerate() {
                match part.state {
                    PartState::Trying { .. } if part.lane.is_some() => {
                        let lane = part.lane.expect("matched");
                        if !part.queued {
                            lane_queues[lane].push_back((id, index));
                            part.queued = true;
                        }
                        if !lane_held[lane] && lane_queues[lane].front() == Some(&(id, index)) {
                            lane_queues[lane].pop_front();
                            lane_held[lane] = true;
                            out.transactions += 1;
                            part.state = PartState::Holding {
                                cpu_left: p.txn_cpu_us + p.order_cpu_us * part.orders as f64,
                                wait_left: p.txn_wait_us,
                            };
                        }
                    }
                    PartState::Trying { at, attempt } if at <= now => {
                        if part
                            .products
                            .iter()
                            .any(|product| locks.get(product).is_some_and(|owner| *owner != id))
                        {
                            out.conflicts += 1;
                            let ceiling =
                                (2_000.0 * 2_f64.powi(attempt.min(16) as i32 + 1)).min(250_000.0);
                            part.state = PartState::Trying {
                                at: now + rng.random_range(0.0..=ceiling),
                                attempt: attempt + 1,
                            };
                        } else {
                            for product in &part.products {
                                locks.insert(*product, id);
                            }
                            out.transactions += 1;
                            part.state = PartState::Holding {
                                cpu_left: p.txn_cpu_us + p.order_cpu_us * part.orders as f64,
                                wait_left: p.txn_wait_us,
                            };
                        }
                    }
                    PartState::Holding {
                        cpu_left,
                        wait_left,
                    } => {
                        part.state = if cpu_left > 0.0 {
                            PartState::Holding {
                                cpu_left: cpu_left - share,
                                wait_left,
                            }
                        } else if wait_left > 0.0 {
                            PartState::Holding {
                                cpu_left,
                                wait_left: wait_left - p.dt_us,
                            }
                        } else {
                            for product in &part.products {
                                locks.remove(product);
                            }
                            if let Some(lane) = part.lane {
                                lane_held[lane] = false;
                            }
                            committed += part.orders;
                            PartState::Done
                        };
                    }
                    _ => {}
                }
            }
            if !consumer
                .parts
                .iter()
                .all(|part| part.state == PartState::Done)
            {
                continue;
            }
            consumer.parts.clear();
            // The next batch: what waits in this consumer's partitions, once it is full or
            // the batch wait has passed since the previous batch started.
            let waiting: u64 = consumer
                .partitions
                .iter()
                .map(|x| backlog[*x].iter().sum::<u64>())
                .sum();
            let due = waiting as usize >= p.batch_max
                || now - consumer.started >= p.max_wait_us
                || !ingesting;
            if waiting == 0 || !due {
                continue;
            }
            // A fetch brings messages of every assigned partition, not one partition first:
            // take from each in proportion to what it holds.
            let mut per_product = vec![0_u64; p.hot];
            let mut room = p.batch_max as u64;
            let share = (p.batch_max as f64 / waiting as f64).min(1.0);
            for partition in &consumer.partitions {
                for (product, count) in backlog[*partition].iter_mut().enumerate() {
                    let take = ((*count as f64 * share).ceil() as u64).min(*count).min(room);
                    *count -= take;
                    room -= take;
                    per_product[product] += take;
                }
            }
            out.batches += 1;
            out.mean_batch += (p.batch_max as u64 - room) as f64;
            consumer.started = now;
            consumer.parts = if lanes { split_by_lane(&per_product, p.workers) } else { split(&per_product, p.workers) };
        }
    }
    out.seconds = now / 1e6;
    out.per_second = p.orders as f64 / out.seconds;
    out.mean_batch /= out.batches.max(1) as f64;
    out
}

/// Busiest product first into the part with the fewest orders: `worker_pool::split_by_product`.
fn split(per_product: &[u64], workers: usize) -> Vec<Part> {
    let mut busiest: Vec<(usize, u64)> = per_product
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, n)| *n > 0)
        .collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut parts: Vec<Part> = (0..workers)
        .map(|_| Part {
            products: Vec::new(),
            orders: 0,
            state: PartState::Trying {
                at: 0.0,
                attempt: 0,
            },
            lane: None,
            queued: false,
        })
        .collect();
    for (product, count) in busiest {
        let lightest = parts
            .iter_mut()
            .min_by_key(|part| part.orders)
            .expect("at least one worker");
        lightest.products.push(product);
        lightest.orders += count;
    }
    parts.retain(|part| part.orders > 0);
    for part in &mut parts {
        part.products.sort_unstable();
    }
    parts
}

/// Product `i` is `P{i+1:03}`; a part per lane, as `split::split` with `Layout::Lanes`.
fn split_by_lane(per_product: &[u64], workers: usize) -> Vec<Part> {
    let mut parts: Vec<Part> = (0..workers)
        .map(|lane| Part { products: Vec::new(), orders: 0, state: PartState::Trying { at: 0.0, attempt: 0 }, lane: Some(lane), queued: false })
        .collect();
    for (product, count) in per_product.iter().enumerate().filter(|(_, n)| **n > 0) {
        let part = &mut parts[lane(&product_name(product), workers)];
        part.products.push(product);
        part.orders += count;
    }
    parts.retain(|part| part.orders > 0);
    parts
}

fn product_name(product: usize) -> String {
    format!("P{:03}", product + 1)
}

/// A simulation that cannot finish (no CPU for anyone) must not spin forever.
fn anyhow_guard(now_us: f64) {
    assert!(
        now_us < 3_600e6,
        "simulated an hour without finishing: check the parameters"
    );
}

fn main() {
    let params = Params::parse();
    println!(
        "cores {} | partitions {} by {}{} | {} hot products | {} orders | workers {} | batch <= {} | ingest {} us/order | txn {} us CPU + {} us wait + {} us/order",
        params.cores,
        params.partitions,
        if params.by_product { "product" } else { "customer" },
        if params.lane_locks { ", lane locks" } else { "" },
        params.hot,
        params.orders,
        params.workers,
        params.batch_max,
        params.ingest_us,
        params.txn_cpu_us,
        params.txn_wait_us,
        params.order_cpu_us
    );
    println!("| consumers | end-to-end/s | vs 1 | batches | mean batch | transactions | NOWAIT conflicts |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut first = None;
    for &consumers in &params.consumers {
        let outcome = simulate(&params, consumers);
        let base = *first.get_or_insert(outcome.per_second);
        println!(
            "| {consumers} | {:.0} | {:.2} | {} | {:.0} | {} | {} |",
            outcome.per_second,
            outcome.per_second / base,
            outcome.batches,
            outcome.mean_batch,
            outcome.transactions,
            outcome.conflicts
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params::parse_from(["scale-sim", "--orders", "20000"])
    }

    #[test]
    fn one_consumer_never_conflicts_and_commits_every_order() {
        let outcome = simulate(&params(), 1);
        assert_eq!(outcome.conflicts, 0);
        assert!(outcome.per_second > 0.0);
        assert!(outcome.mean_batch > 0.0 && outcome.mean_batch <= 10_000.0);
    }

    #[test]
    fn consumers_sharing_hot_rows_conflict_but_partitioning_by_product_does_not() {
        let by_customer = simulate(&params(), 4);
        assert!(by_customer.conflicts > 0, "{by_customer:?}");
        let p = Params {
            by_product: true,
            ..params()
        };
        assert_eq!(simulate(&p, 4).conflicts, 0);
    }

    #[test]
    fn with_lane_locks_consumers_queue_for_lanes_and_never_conflict() {
        let p = Params { lane_locks: true, ..params() };
        let outcome = simulate(&p, 4);
        assert_eq!(outcome.conflicts, 0, "{outcome:?}");
        assert!(outcome.transactions > 0);
        let parts = split_by_lane(&[10; 10], 4);
        assert_eq!(parts.iter().map(|part| part.orders).sum::<u64>(), 100);
        for part in &parts {
            assert!(part.products.iter().all(|product| Some(lane(&product_name(*product), 4)) == part.lane));
        }
    }

    #[test]
    fn more_cores_do_not_slow_one_consumer_down() {
        let two = simulate(&params(), 1).per_second;
        let eight = simulate(
            &Params {
                cores: 8.0,
                ..params()
            },
            1,
        )
        .per_second;
        assert!(eight >= two, "{eight} < {two}");
    }

    #[test]
    fn the_split_keeps_every_order_and_balances() {
        let parts = split(&[500, 500, 100, 100, 0], 2);
        assert_eq!(parts.iter().map(|p| p.orders).sum::<u64>(), 1200);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.orders == 600));
    }
}
