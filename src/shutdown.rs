//! The process's stop signal, and the types every background task is owned by.
//!
//! A task is spawned on a [`TaskTracker`] (the one in `App::tasks`), so the server can close the
//! tracker and wait until every task has finished, and it stops when its [`CancellationToken`]
//! is cancelled. The order in which the server drains is in `startup`.

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
