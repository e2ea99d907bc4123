//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::build_info::LONG_VERSION;
use crate::domain::Role;

#[derive(Debug, Parser)]
#[command(name = "hubbub", version = LONG_VERSION, about = "Live-audience services")]
pub struct Cli {
    /// TOML configuration file (settings not in it come from defaults and HUBBUB_* variables).
    #[arg(long, global = true, env = "HUBBUB_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the given roles (all of them when none is given).
    Serve {
        #[arg(value_enum)]
        roles: Vec<Role>,
    },
    /// Apply pending database migrations.
    Migrate {
        /// List migrations and whether each is applied, changing nothing.
        #[arg(long)]
        status: bool,
    },
    /// Print the effective configuration as TOML, secrets redacted.
    CheckConfig,
}
