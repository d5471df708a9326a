//! The process's stop signal, and the types every background task is owned by.
//!
//! A task is spawned on a [`TaskTracker`] (the one in `App::tasks`), so the server can close the
//! tracker and wait until every task has finished, and it stops when its [`CancellationToken`]
//! is cancelled. The order in which the server drains is in `startup`.

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
