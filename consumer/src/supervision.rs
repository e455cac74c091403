//! Watching the consumer's long-running tasks: the batch loop, the admin server and the stats
//! reporter run until shutdown, so any of them ending before that is a failure. Without
//! this, a dead batch loop left /health and /ready answering 200 while nothing was consumed.

use std::any::Any;
use std::error::Error;

use tokio::task::{JoinError, JoinHandle};

pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Why the consumer stopped other than by a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{task} stopped although no shutdown was requested")]
    Stopped { task: &'static str },
    #[error("{task} failed")]
    Failed {
        task: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("{task} panicked: {message}")]
    Panicked { task: &'static str, message: String },
    #[error("{task} was cancelled")]
    Cancelled { task: &'static str },
}

impl RunError {
    /// The error for `task` having ended with `outcome`, or `None` if it ended cleanly and
    /// that was expected (after shutdown).
    pub fn from_exit(task: &'static str, outcome: Result<Result<(), BoxError>, JoinError>, expected: bool) -> Option<Self> {
        match outcome {
            Ok(Ok(())) if expected => None,
            Ok(Ok(())) => Some(Self::Stopped { task }),
            Ok(Err(source)) => Some(Self::Failed { task, source }),
            Err(error) if error.is_panic() => Some(Self::Panicked { task, message: panic_message(error.into_panic()) }),
            Err(_) => Some(Self::Cancelled { task }),
        }
    }
}

/// A task that is awaited at most once, whichever of the select arms or the shutdown
/// sequence gets to it first (a `JoinHandle` must not be polled after it completed).
pub struct Watched {
    pub name: &'static str,
    handle: Option<JoinHandle<Result<(), BoxError>>>,
}

impl Watched {
    pub fn new(name: &'static str, handle: JoinHandle<Result<(), BoxError>>) -> Self {
        Self { name, handle: Some(handle) }
    }

    /// Waits for the task to end; pends forever if it was already collected.
    pub async fn exited(&mut self) -> Result<Result<(), BoxError>, JoinError> {
        match self.handle.as_mut() {
            Some(handle) => {
                let outcome = handle.await;
                self.handle = None;
                outcome
            }
            None => std::future::pending().await,
        }
    }

    pub fn is_running(&self) -> bool {
        self.handle.is_some()
    }

    pub fn abort(&self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

pub fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "non-string panic payload".to_owned(), |s| (*s).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_way_a_task_can_end_is_named() {
        let mut returned = Watched::new("stats reporter", tokio::spawn(async { Ok(()) }));
        let error = RunError::from_exit(returned.name, returned.exited().await, false).unwrap();
        assert_eq!(error.to_string(), "stats reporter stopped although no shutdown was requested");
        assert!(!returned.is_running());

        let mut panicked = Watched::new("batch loop", tokio::spawn(async { panic!("boom") }));
        let error = RunError::from_exit(panicked.name, panicked.exited().await, true).unwrap();
        assert_eq!(error.to_string(), "batch loop panicked: boom");

        let mut failed = Watched::new("admin server", tokio::spawn(async { Err(std::io::Error::other("socket gone").into()) }));
        let error = RunError::from_exit(failed.name, failed.exited().await, false).unwrap();
        assert_eq!(orderflow_common::errors::Chain(&error).to_string(), "admin server failed: socket gone");

        let mut clean = Watched::new("batch loop", tokio::spawn(async { Ok(()) }));
        assert!(RunError::from_exit(clean.name, clean.exited().await, true).is_none());
    }
}
