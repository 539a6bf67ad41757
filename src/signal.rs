//! Waiting for the signals that ask a process to stop: Ctrl-C (SIGINT) and, on Unix, SIGTERM
//! (what Kubernetes, systemd and `docker stop` send). Both consumers' `run_until_signal` use it.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Resolves when the process receives SIGINT or SIGTERM (Ctrl-C only outside Unix), with the
/// signal's name. Returns an error if no handler could be installed; the caller then keeps
/// running until it is stopped another way.
pub async fn shutdown_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
    }
}

/// Cancels `token` when the process receives SIGINT or SIGTERM (see [`shutdown_signal`]); the
/// task ends early if `token` is cancelled another way. If no signal handler can be installed it
/// logs a warning and leaves `token` alone.
///
/// ```no_run
/// # async fn demo() {
/// let stop = idemq::CancellationToken::new();
/// idemq::signal::cancel_on_signal(stop.clone());
/// // Give `stop` to a consumer's `run(stop)`: it ends on a signal, or on `stop.cancel()` from
/// // elsewhere in the program.
/// stop.cancelled().await;
/// # }
/// ```
///
/// Must be called inside a Tokio runtime.
pub fn cancel_on_signal(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            r = shutdown_signal() => match r {
                Ok(name) => {
                    info!(signal = name, "shutting down");
                    token.cancel();
                }
                // No signal handler: keep running until `token` is cancelled.
                Err(err) => warn!(%err, "cannot listen for SIGINT/SIGTERM"),
            },
            _ = token.cancelled() => {}
        }
    })
}
