//! Waiting for the signals that ask a process to stop: Ctrl-C (SIGINT) and, on Unix, SIGTERM
//! (what Kubernetes, systemd and `docker stop` send).

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
