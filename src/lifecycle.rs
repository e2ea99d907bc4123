//! systemd integration (`Type=notify`) and the signals that start a shutdown.

use sd_notify::NotifyState;

/// Tells systemd we are listening (no-op without `NOTIFY_SOCKET`).
pub fn notify_ready() {
    if let Err(error) = sd_notify::notify(&[NotifyState::Ready]) {
        tracing::warn!(%error, "could not notify systemd of readiness");
    }
}

/// Shows `text` in `systemctl status` (no-op without `NOTIFY_SOCKET`).
pub fn notify_status(text: &str) {
    if let Err(error) = sd_notify::notify(&[NotifyState::Status(text)]) {
        tracing::debug!(%error, "could not send a status to systemd");
    }
}

pub fn notify_stopping() {
    if let Err(error) = sd_notify::notify(&[NotifyState::Stopping]) {
        tracing::warn!(%error, "could not notify systemd of shutdown");
    }
}

/// Raises the soft limit of open files to the hard limit, as a server holding
/// thousands of SSE connections needs: systemd and shells start processes at a
/// soft limit of 1,024 whatever the hard limit allows, and Rust does not raise it.
/// Under systemd the unit's `LimitNOFILE=` sets both, so this changes nothing there;
/// a manual run gets the same headroom.
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open files limit"),
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called,
/// not when the future is first polled: a SIGTERM that arrives right after
/// `READY=1` must start a graceful shutdown, not kill the process by default action.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                    _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; falling back to Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
