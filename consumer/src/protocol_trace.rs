//! Recording the protocol steps this process takes, for trace validation (issue #14). With
//! `ORDERFLOW_PROTOCOL_TRACE=<dir>` set at startup, the process appends one JSON line per step
//! to `<dir>/<member>.jsonl`, `member` a fresh UUIDv7 (the schema and the reader are in
//! `orderflow_common::protocol_trace`). A switch for tests, off by default.
//!
//! Off, `record` costs one relaxed atomic load: the step is a closure, called only when
//! recording, so nothing is built. Call sites that would gather data for a step on their own
//! check `enabled()` first.
//!
//! Why a synchronous write, not a writer thread behind a channel: a trace is evidence, and
//! it must be evidence in both directions. A recorded step must have happened, so each step
//! is recorded after it (after COMMIT returned, after the broker's acknowledgement). A step
//! that happened must be in the trace before anything that depends on it is visible: with a
//! channel, a crash could lose a `PartCommitted` that was queued while its batch's offsets
//! were already committed, and the model would see offsets pass an effect that is not in the
//! trace. So the line is written before the caller goes on, with one `write(2)` on an
//! O_APPEND file and no user-space buffer. Once the call returns the line is in the kernel's
//! page cache, which survives SIGKILL and abort() (not a power loss; the tests do not cut
//! power). A crash mid-write leaves at most a torn last line, which `parse` drops; a crash
//! between a step and its line loses that one step, the last of the trace.
//!
//! That write blocks a Tokio worker for as long as a small write to the page cache takes
//! (microseconds, like a log line to stdout), a handful of times per batch, and only when
//! recording. The mutex around it is held for that write only; it keeps `seq` in file order.
//! A failed write aborts the process: a trace with a hole would lie to the model, and the
//! switch exists only for tests.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use orderflow_common::command::Inbound;
pub use orderflow_common::protocol_trace::{CommitCause, Effect, Message, Position, Step, StockMove, VARIABLE};

use crate::lifecycle::StockDelta;

/// This process's switch.
static SWITCH: Switch = Switch::off();

/// Turns recording on if `ORDERFLOW_PROTOCOL_TRACE` names a directory (created if needed);
/// called once by `Application::build`. A second call in the same process (tests that build
/// several consumers in one process) keeps the first trace file.
pub fn init_from_env() -> std::io::Result<()> {
    let Some(dir) = std::env::var_os(VARIABLE).filter(|dir| !dir.is_empty()) else {
        return Ok(());
    };
    if SWITCH.is_on() {
        tracing::warn!(variable = VARIABLE, "protocol trace already on in this process; one trace file for all its consumers");
        return Ok(());
    }
    let recorder = Recorder::create(Path::new(&dir))?;
    tracing::warn!(variable = VARIABLE, path = %recorder.path().display(), member = %recorder.member(), "protocol trace on: every protocol step is written to this file");
    SWITCH.turn_on(recorder);
    Ok(())
}

/// Records the step `step` builds, if recording is on; otherwise does nothing and never
/// calls `step`.
#[inline]
pub fn record(step: impl FnOnce() -> Step) {
    SWITCH.record(step);
}

/// Whether steps are recorded: for call sites that must gather data before they can build one.
#[inline]
pub fn enabled() -> bool {
    SWITCH.is_on()
}

/// The recorder behind the switch: one per process, set once.
struct Switch {
    on: AtomicBool,
    recorder: OnceLock<Recorder>,
}

impl Switch {
    const fn off() -> Self {
        Self { on: AtomicBool::new(false), recorder: OnceLock::new() }
    }

    #[inline]
    fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    #[inline]
    fn record(&self, step: impl FnOnce() -> Step) {
        if self.is_on() {
            self.write(step());
        }
    }

    #[cold]
    #[inline(never)]
    fn write(&self, step: Step) {
        if let Some(recorder) = self.recorder.get() {
            recorder.record(&step);
        }
    }

    fn turn_on(&self, recorder: Recorder) {
        if self.recorder.set(recorder).is_ok() {
            self.on.store(true, Ordering::Relaxed);
        }
    }
}

/// One member's trace file.
pub struct Recorder {
    member: Uuid,
    path: PathBuf,
    /// The next `seq`, and the file: taken together, so that seq order is file order.
    file: Mutex<(u64, File)>,
}

impl Recorder {
    /// Creates `<dir>/<member>.jsonl` for a new member (and `dir` if needed).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let member = Uuid::now_v7();
        let path = dir.join(format!("{member}.jsonl"));
        let file = OpenOptions::new().append(true).create_new(true).open(&path)?;
        Ok(Self { member, path, file: Mutex::new((0, file)) })
    }

    pub fn member(&self) -> Uuid {
        self.member
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line: `{"member":..,"seq":..,"at_us":..,` and the step's own fields, as
    /// `protocol_trace::Record` reads it. The step is serialized before the lock is taken.
    pub fn record(&self, step: &Step) {
        let body = serde_json::to_vec(step).expect("a step always serializes");
        debug_assert!(body.first() == Some(&b'{') && body.len() > 2, "a step is a JSON object with its tag");
        let mut guard = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let (seq, file) = &mut *guard;
        let at_us = chrono::Utc::now().timestamp_micros();
        let mut line = Vec::with_capacity(body.len() + 96);
        write!(line, r#"{{"member":"{}","seq":{seq},"at_us":{at_us},"#, self.member).expect("writing to a Vec");
        line.extend_from_slice(&body[1..]);
        line.push(b'\n');
        // One write(2): on an O_APPEND file it lands whole at the end, or (killed mid-way)
        // leaves a torn last line. Not write_all: a second write could interleave.
        match file.write(&line) {
            Ok(written) if written == line.len() => *seq += 1,
            outcome => {
                eprintln!("{VARIABLE}: could not append to {}: {outcome:?}; aborting rather than leave a trace with a hole", self.path.display());
                std::process::abort();
            }
        }
    }
}

/// What a polled message is to the protocol: an order with its lines, a command, or (no
/// `Inbound`) a message for the dead-letter topic.
pub fn message(inbound: Option<&Inbound>) -> Message {
    match inbound {
        Some(Inbound::Order(order)) => Message::Order {
            order_id: order.order_id,
            lines: order.lines().iter().map(|line| (line.product_id.clone(), i64::from(line.quantity))).collect(),
        },
        Some(Inbound::Command(command)) => {
            Message::Command { command_id: command.command_id, order_id: command.order_id, command: command.kind.as_str().to_owned() }
        }
        None => Message::Invalid,
    }
}

/// `OffsetsRecorded` for a written batch: per partition still `assigned`, the offset after
/// the batch's last message there.
pub fn offsets_recorded(positions: &[(i32, i64)], assigned: &[i32]) -> Step {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset) in positions.iter().filter(|(partition, _)| assigned.contains(partition)) {
        let entry = next.entry(*partition).or_insert(offset + 1);
        *entry = (*entry).max(offset + 1);
    }
    Step::OffsetsRecorded { next: next.into_iter().map(|(partition, offset)| Position { partition, offset }).collect() }
}

/// `OffsetsCommitted` for a commit list (its offsets are the next offsets to read).
pub fn offsets_committed(list: &TopicPartitionList, cause: CommitCause) -> Step {
    let mut offsets: Vec<Position> = list
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some(Position { partition: element.partition(), offset }),
            _ => None,
        })
        .collect();
    offsets.sort_unstable();
    Step::OffsetsCommitted { offsets, cause }
}

/// A transaction's stock changes, per product with any change, sorted by product.
pub fn stock_moves(deltas: &HashMap<String, StockDelta>) -> Vec<StockMove> {
    let mut moves: Vec<StockMove> = deltas
        .iter()
        .filter(|(_, delta)| !delta.is_zero())
        .map(|(product_id, delta)| StockMove { product_id: product_id.clone(), available: delta.available, reserved: delta.reserved, sold: delta.sold })
        .collect();
    moves.sort_unstable_by(|a, b| a.product_id.cmp(&b.product_id));
    moves
}

/// What a committed transaction did, gathered while it ran (only when recording): the
/// content of its `PartCommitted` or `Swept`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Effects {
    pub effects: Vec<Effect>,
    pub stock: Vec<StockMove>,
    pub outbox_events: Vec<Uuid>,
    /// Events handed to the batch loop (published after the batch).
    pub events: Vec<Uuid>,
}

impl Effects {
    /// Empty when recording, `None` (and nothing gathered) when not.
    pub fn if_enabled() -> Option<Self> {
        enabled().then(Self::default)
    }

    pub fn note(effects: &mut Option<Self>, order_id: Uuid, command_id: Option<Uuid>, change: &str) {
        if let Some(effects) = effects {
            effects.effects.push(Effect { order_id, command_id, change: change.to_owned() });
        }
    }

    pub fn part_committed(self, part: usize) -> Step {
        let Self { effects, stock, outbox_events, events } = self;
        Step::PartCommitted { part, effects, stock, outbox_events, events }
    }

    /// A sweeper transaction: `expired` are the orders whose change is "expired".
    pub fn swept(self) -> Step {
        let expired = self.effects.iter().filter(|effect| effect.change == "expired").map(|effect| effect.order_id).collect();
        Step::Swept { expired, stock: self.stock, outbox_events: self.outbox_events, effects: self.effects }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Instant;

    use orderflow_common::protocol_trace::{parse, Record};

    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("orderflow-trace-unit-{name}-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn off_the_step_is_never_built_and_nothing_is_written() {
        let switch = Switch::off();
        let built = Cell::new(0);
        for _ in 0..1000 {
            switch.record(|| {
                built.set(built.get() + 1);
                Step::Revoked { partitions: vec![] }
            });
        }
        assert_eq!(built.get(), 0, "off, the closure is never called");
        assert!(!switch.is_on() && switch.recorder.get().is_none());
        // The process-wide switch of a unit test run is off too (nothing here turns it on).
        record(|| panic!("the process switch is off in unit tests"));
    }

    /// The off path of the process switch, `calls` times: what every call site costs.
    fn record_off(calls: u64) {
        for n in 0..calls {
            record(|| Step::Revoked { partitions: vec![std::hint::black_box(n) as i32] });
        }
    }

    /// The same loop without the call, to subtract.
    fn baseline(calls: u64) {
        for n in 0..calls {
            std::hint::black_box(n);
        }
    }

    /// Prints the time per call off, in whatever profile the tests are built with (not an
    /// assertion: the machine is shared):
    /// `cargo nextest run -p orderflow-consumer --lib off_cost --no-capture`.
    #[test]
    fn off_cost() {
        let calls = 10_000_000_u64;
        let started = Instant::now();
        record_off(calls);
        let off = started.elapsed();
        let started = Instant::now();
        baseline(calls);
        let empty = started.elapsed();
        println!(
            "record() off: {:.2} ns per call; the loop alone: {:.2} ns per iteration",
            off.as_nanos() as f64 / calls as f64,
            empty.as_nanos() as f64 / calls as f64
        );
    }

    /// For an instruction count (ARCHITECTURE, Protocol traces): run each of these two under
    /// `valgrind --tool=callgrind` and divide the difference by a million.
    #[test]
    #[ignore = "run by hand under callgrind"]
    fn off_cost_million_records() {
        record_off(1_000_000);
    }

    #[test]
    #[ignore = "run by hand under callgrind"]
    fn off_cost_million_baseline() {
        baseline(1_000_000);
    }

    #[test]
    fn on_every_step_is_one_line_that_parses_in_order() {
        let dir = scratch_dir("on");
        let switch = Switch::off();
        switch.turn_on(Recorder::create(&dir).unwrap());
        let recorder = switch.recorder.get().unwrap();
        let (member, path) = (recorder.member(), recorder.path().to_owned());
        assert_eq!(path, dir.join(format!("{member}.jsonl")));
        let order_id = Uuid::now_v7();
        let steps = vec![
            Step::Started { default_hold_seconds: 900, events: true },
            Step::Assigned { partitions: vec![0, 1] },
            Step::Polled {
                messages: vec![
                    (Position { partition: 0, offset: 4 }, Message::Order { order_id, lines: vec![("P1".into(), 2)] }),
                    (Position { partition: 1, offset: 0 }, Message::Invalid),
                ],
            },
            Effects {
                effects: vec![Effect { order_id, command_id: None, change: "reserved".into() }],
                stock: vec![StockMove { product_id: "P1".into(), available: -2, reserved: 2, sold: 0 }],
                outbox_events: vec![],
                events: vec![Uuid::now_v7()],
            }
            .part_committed(0),
            Step::EventsPublished { event_ids: vec![Uuid::now_v7()], via_outbox: false },
            offsets_recorded(&[(0, 4), (1, 0), (2, 9)], &[0, 1]),
        ];
        for step in &steps {
            let step = step.clone();
            switch.record(move || step);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), steps.len());
        let records = parse(&text).unwrap();
        assert_eq!(records.iter().map(|r| r.step.clone()).collect::<Vec<_>>(), steps);
        assert!(records.iter().enumerate().all(|(n, r)| r.member == member && r.seq == n as u64));
        assert!(records.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        assert_eq!(
            records.last().unwrap().step,
            Step::OffsetsRecorded { next: vec![Position { partition: 0, offset: 5 }, Position { partition: 1, offset: 1 }] },
            "only assigned partitions, the offset after the last message"
        );
        // The same line as serde writes a Record.
        let again: Record = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(serde_json::to_string(&again).unwrap(), text.lines().next().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_rest_of_the_trace_kept() {
        let dir = scratch_dir("torn");
        let recorder = Recorder::create(&dir).unwrap();
        recorder.record(&Step::Started { default_hold_seconds: 1, events: false });
        recorder.record(&Step::Assigned { partitions: vec![3] });
        // As if killed in the middle of the next write.
        let mut file = OpenOptions::new().append(true).open(recorder.path()).unwrap();
        file.write_all(br#"{"member":"00000000-0000-0000-0000-000000000000","seq":2,"at_us":1,"step":"rev"#).unwrap();
        let records = parse(&std::fs::read_to_string(recorder.path()).unwrap()).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].step, Step::Assigned { partitions: vec![3] });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn several_threads_write_whole_lines_with_seq_in_file_order() {
        let dir = scratch_dir("threads");
        let recorder = Recorder::create(&dir).unwrap();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let recorder = &recorder;
                scope.spawn(move || {
                    for n in 0..250 {
                        recorder.record(&Step::Assigned { partitions: vec![thread, n] });
                    }
                });
            }
        });
        let records = parse(&std::fs::read_to_string(recorder.path()).unwrap()).unwrap();
        assert_eq!(records.len(), 1000);
        assert!(records.iter().enumerate().all(|(n, r)| r.seq == n as u64));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn committed_offsets_come_from_the_commit_list() {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset("t", 2, Offset::Offset(7)).unwrap();
        list.add_partition_offset("t", 0, Offset::Offset(3)).unwrap();
        assert_eq!(
            offsets_committed(&list, CommitCause::Revoke),
            Step::OffsetsCommitted {
                offsets: vec![Position { partition: 0, offset: 3 }, Position { partition: 2, offset: 7 }],
                cause: CommitCause::Revoke
            }
        );
    }
}
