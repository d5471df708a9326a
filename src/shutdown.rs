//! The process's stop signal, and the types every background task is owned by.
//!
//! A task is spawned on a [`TaskTracker`] (the one in `App::tasks`), so the server can close the
//! tracker and wait until every task has finished, and it stops when its [`CancellationToken`]
//! is cancelled. The order in which the server drains is in `startup`.

use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Completes on SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are installed when this is called, not when the future is first polled: the
/// server is polled for the first time together with its listener, so a SIGTERM sent as soon
/// as the first call was answered could otherwise arrive before any handler and kill the
/// process with the default action instead of draining it.
#[cfg(unix)]
pub fn signal() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
pub fn signal() -> impl std::future::Future<Output = ()> + Send {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How a claiming worker polls and stops: see [`claim_batches`].
#[derive(Debug, Clone, Copy)]
pub struct Claiming {
    /// What the worker claims, for its warning when a pass fails ("inbox batch").
    pub what: &'static str,
    /// Which of its kind's workers this is, for the same warning.
    pub worker: usize,
    /// A pass that claims this many rows found a full batch: there may be more waiting, so the
    /// next pass starts at once.
    pub batch: usize,
    /// How long to wait after a pass that found less, or failed.
    pub poll: Duration,
}

/// The loop of a worker that claims rows from a queue table (the inbox workers, the sandbox's
/// deliveries): runs `pass` (claim a batch, handle it; returns how many rows it claimed) until
/// `stop_claiming`, waiting `poll` after a pass that found less than a full batch or failed
/// (the rows of a failed pass stay due, and the failure is logged). At `stop` a pass in
/// flight is dropped: its transaction rolls back, or its lease runs out, and its rows are due
/// again for the next worker, here or on another replica.
pub async fn claim_batches<F, Fut, E>(
    claiming: Claiming,
    stop_claiming: CancellationToken,
    stop: CancellationToken,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, E>>,
    E: std::fmt::Display,
{
    while !stop_claiming.is_cancelled() {
        let ran = tokio::select! {
            ran = pass() => ran,
            () = stop.cancelled() => return,
        };
        let idle = match ran {
            Ok(n) => n < claiming.batch,
            Err(e) => {
                tracing::warn!(
                    worker = claiming.worker,
                    error = %e,
                    "{} failed; its rows stay due",
                    claiming.what
                );
                true
            }
        };
        if idle {
            tokio::select! {
                () = tokio::time::sleep(claiming.poll) => {}
                () = stop_claiming.cancelled() => return,
                () = stop.cancelled() => return,
            }
        }
    }
}
