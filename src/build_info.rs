//! Version, build number and commit, fixed at compile time. The Nix build sets
//! `HUBBUB_BUILD` and `HUBBUB_COMMIT`; `build.rs` falls back to `dev`/`unknown`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: &'static str,
    pub build: &'static str,
    pub commit: &'static str,
}

pub const BUILD_INFO: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    build: env!("HUBBUB_BUILD"),
    commit: env!("HUBBUB_COMMIT"),
};

/// The `--version` text: `0.1.0 (build 42, commit abc123)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (build ",
    env!("HUBBUB_BUILD"),
    ", commit ",
    env!("HUBBUB_COMMIT"),
    ")"
);
