//! Finding daemon binaries, running them as an unprivileged user when we are root,
//! waiting for them to listen, and stopping them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// How long a daemon may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `name` on PATH, else in the first matching extra directory (newest first).
pub fn find_binary(name: &str, extra_globs: &[&str]) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    for pattern in extra_globs {
        // Only the `/usr/lib/postgresql/*/bin` shape is needed: one `*` component.
        let (base, rest) = pattern.split_once("/*/").unwrap_or((pattern, ""));
        let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join(rest).join(name))
            .filter(|p| p.is_file())
            .collect();
        versions.sort_by_key(|p| version_key(p));
        if let Some(newest) = versions.pop() {
            return Ok(newest);
        }
    }
    bail!("`{name}` not found on PATH or in {extra_globs:?}; install it (see tests/run)")
}

fn version_key(path: &Path) -> Vec<u64> {
    path.components()
        .filter_map(|c| c.as_os_str().to_str()?.parse().ok())
        .collect()
}

/// The unprivileged account daemons run as when the tests run as root (PostgreSQL
/// refuses to run as root); `None` when we are not root.
pub fn unprivileged_user() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    ["postgres", "nobody"].into_iter().find(|user| {
        std::process::Command::new("id")
            .arg(user)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// A command that runs `program` as `user` (directly when `None`).
pub fn command_as(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(user) => {
            // setpriv execs in place (runuser would fork), so signals reach the daemon.
            let mut command = Command::new("setpriv");
            command
                .args([
                    "--reuid",
                    user,
                    "--regid",
                    user,
                    "--init-groups",
                    "--reset-env",
                    "--",
                ])
                .arg(program)
                // The caller's directory (a checkout in a mode-0700 home, say) may be
                // closed to that user; PostgreSQL's tools fail when they cannot return to it.
                .current_dir("/");
            command
        }
        None => Command::new(program),
    }
}

/// Gives `path` (recursively) to `user`, so a daemon running as that user can use it.
pub async fn give_to(user: Option<&str>, path: &Path) -> anyhow::Result<()> {
    let Some(user) = user else { return Ok(()) };
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:"))
        .arg(path)
        .status()
        .await?;
    if !status.success() {
        bail!("chown {user} {} failed", path.display());
    }
    Ok(())
}

/// Runs a short command to completion, failing with its output when it fails.
pub async fn run(mut command: Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Spawns a long-running daemon with its output appended to `log` (so restarts
/// keep the earlier runs' lines).
pub fn spawn_daemon(mut command: Command, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    Ok(command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()?)
}

/// Waits until something accepts TCP connections on the loopback `port`.
pub async fn wait_for_port(port: u16, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "daemon exited with {status} before listening:\n{}",
                log_tail(log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "daemon not listening on {port} after {START_TIMEOUT:?}:\n{}",
                log_tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until nothing accepts connections on `port` any more.
pub async fn wait_for_port_closed(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        if Instant::now() > deadline {
            bail!("port {port} still open after stopping the daemon");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Sends `signal` to the child and waits up to 10 s for it to exit, then kills it.
pub async fn stop_child(child: &mut Child, signal: libc::c_int) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(status) => {
            status?;
        }
        Err(_) => {
            child.kill().await?;
        }
    }
    Ok(())
}

/// Best effort from `Drop`: a signal, then a bounded wait without a runtime.
pub fn stop_child_blocking(child: &mut Child, signal: libc::c_int) {
    let Some(pid) = child.id() else { return };
    // SAFETY: as above.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.start_kill();
}
