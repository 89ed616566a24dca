//! Turning Ctrl-C and SIGTERM into a [`CancellationToken`].
//!
//! Every long-running part of modalis (bus, simulator, controller) takes a token and stops
//! its sources when it fires, so tests can start and stop everything in-process and the
//! binary stops the same way on a signal.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first Ctrl-C (SIGINT) or SIGTERM. Spawns one task on the current
/// tokio runtime; the task ends when the token is cancelled for any other reason.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let reason = tokio::select! {
            () = token.cancelled() => return,
            r = signal() => r,
        };
        tracing::warn!("{reason}: stopping every source");
        token.cancel();
    });
}

#[cfg(unix)]
async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    // If a handler cannot be installed the process keeps the default action for that
    // signal (terminate), which is still a stop; waiting on the other one is all we can do.
    let mut term = signal(SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => if r.is_ok() { "Ctrl-C" } else { std::future::pending().await },
        () = term => "SIGTERM",
    }
}

#[cfg(not(unix))]
async fn signal() -> &'static str {
    match tokio::signal::ctrl_c().await {
        Ok(()) => "Ctrl-C",
        Err(_) => std::future::pending().await,
    }
}
