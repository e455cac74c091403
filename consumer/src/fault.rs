//! A fault switch for crash tests: `ORDERFLOW_FAULT_AFTER_COMMIT=batch` aborts the process
//! right after a batch's database commit and before its events are published;
//! `=outbox` right after a commit that wrote outbox rows and before they are relayed. Read
//! once at startup; unset, each check is one relaxed atomic load.

use std::sync::atomic::{AtomicU8, Ordering};

pub const VARIABLE: &str = "ORDERFLOW_FAULT_AFTER_COMMIT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Point {
    Batch = 1,
    Outbox = 2,
}

static ARMED: AtomicU8 = AtomicU8::new(0);

/// Reads the variable; called once by `Application::build`.
pub fn arm_from_env() {
    let point = match std::env::var(VARIABLE).as_deref() {
        Ok("batch") => Point::Batch as u8,
        Ok("outbox") => Point::Outbox as u8,
        _ => 0,
    };
    if point != 0 {
        tracing::warn!(variable = VARIABLE, point, "fault switch armed: the process aborts after its next such commit");
    }
    ARMED.store(point, Ordering::Relaxed);
}

/// Aborts (as SIGKILL would: no destructors, no flush) if the switch is armed for `point`.
pub fn after_commit(point: Point) {
    if ARMED.load(Ordering::Relaxed) == point as u8 {
        eprintln!("{VARIABLE}: aborting after a commit ({point:?})");
        std::process::abort();
    }
}
