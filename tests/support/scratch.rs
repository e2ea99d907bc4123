//! Where throwaway daemon state lives: template clusters, data directories, sockets,
//! certificates and configuration files go into temporary directories under one base
//! that the daemons' unprivileged user can reach, never under the checkout (which may
//! sit in a mode-0700 home such as `/root`).
//!
//! The base is `$TEST_SCRATCH_DIR`, else the system's temporary directory. Every
//! daemon directory is removed when its owner is dropped; the PostgreSQL template
//! cluster (one `initdb` shared by the test processes of a run) stays in the base as a
//! cache: `tests/run` points the base at a fresh directory and removes it afterwards.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::bail;
use tempfile::TempDir;

use super::process::unprivileged_user;

/// The directory every daemon directory is made in.
pub fn base() -> PathBuf {
    std::env::var_os("TEST_SCRATCH_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// A fresh directory for one daemon (or one stack), removed on drop.
pub fn tempdir(prefix: &str) -> anyhow::Result<TempDir> {
    reachable()?;
    let base = base();
    std::fs::create_dir_all(&base)?;
    Ok(tempfile::Builder::new().prefix(prefix).tempdir_in(&base)?)
}

/// Fails with one clear line when the daemons' user cannot enter the base directory
/// (checked once per process).
pub fn reachable() -> anyhow::Result<()> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = CHECKED.get_or_init(|| match unprivileged_user() {
        Some(user) => check(user),
        None => Ok(()),
    });
    match outcome {
        Ok(()) => Ok(()),
        Err(message) => bail!("{message}"),
    }
}

fn check(user: &str) -> Result<(), String> {
    let base = base();
    // Entering a directory needs search permission on it and on every parent: ask
    // the kernel as that user rather than guessing from mode bits.
    let entered = std::process::Command::new("setpriv")
        .args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .args(["test", "-x"])
        .arg(&base)
        .current_dir("/")
        .status();
    match entered {
        Ok(status) if status.success() => Ok(()),
        Ok(_) => Err(format!(
            "test support: daemons run as `{user}` (the tests run as root), and `{user}` cannot \
             enter {}; set TEST_SCRATCH_DIR to a directory it can reach (for example /tmp)",
            base.display()
        )),
        Err(error) => Err(format!(
            "test support: cannot run `setpriv` to check that `{user}` can enter {}: {error}",
            base.display()
        )),
    }
}
