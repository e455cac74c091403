//! Waiting for the signals that mean "stop gracefully".

/// Resolves on SIGTERM (docker stop, kill, scripts/down.sh) or Ctrl-C.
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
