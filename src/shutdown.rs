//! Graceful shutdown in one place: a signal every task can wait on, and a drop guard in each
//! subscription so the controller knows when every task has stopped.

use tokio::sync::{mpsc, watch};

/// Owned by whoever starts the tasks; triggers shutdown and waits for them.
pub struct ShutdownController {
    signal: watch::Sender<bool>,
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
}

/// Held by each task: `recv` completes once shutdown starts; dropping it tells the controller
/// the task is gone.
#[derive(Clone)]
pub struct Shutdown {
    signal: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
}

impl Default for ShutdownController {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownController {
    pub fn new() -> Self {
        let (signal, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            signal,
            done_tx,
            done_rx,
        }
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            signal: self.signal.subscribe(),
            _done: self.done_tx.clone(),
        }
    }

    pub fn trigger(&self) {
        self.signal.send_replace(true);
    }

    /// Triggers shutdown and waits until every subscription is dropped.
    pub async fn shutdown(self) {
        self.trigger();
        let Self {
            done_tx,
            mut done_rx,
            ..
        } = self;
        drop(done_tx);
        // Nothing is ever sent: `recv` returns `None` once the last sender is dropped.
        let _ = done_rx.recv().await;
    }
}

impl Shutdown {
    pub async fn recv(&mut self) {
        // An error means the controller is gone, which is a shutdown too.
        let _ = self.signal.wait_for(|stop| *stop).await;
    }
}

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
