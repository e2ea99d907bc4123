//! The `hubbub` command: parses the command line and configuration, then serves,
//! migrates or prints the configuration.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use hubbub::cli::{Cli, Command};
use hubbub::configuration::{Environment, Settings, redact_urls_in};
use hubbub::startup::{Application, StartupError};
use hubbub::storage::{Database, StorageError};
use hubbub::{lifecycle, telemetry};

/// Exit status for an invalid configuration (distinct from runtime failures).
const EXIT_CONFIG: u8 = 2;
/// Exit status when the database did not come up within `database.startup_wait_secs`
/// (EX_TEMPFAIL): trying again later may succeed, so systemd restarts on it.
const EXIT_DATABASE_UNREACHABLE: u8 = 75;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Environment::from_process();
    let settings = match Settings::load(cli.config.as_deref(), &env) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("hubbub: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Command::CheckConfig = cli.command {
        return match settings.to_redacted_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("hubbub: cannot render the configuration: {error}");
                ExitCode::FAILURE
            }
        };
    }
    // Held to the end of `main`: dropping it flushes the logging thread.
    let _log_guard = match telemetry::init(telemetry::LogOutput::from_process()) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("hubbub: cannot set up logging: {error}");
            return ExitCode::FAILURE;
        }
    };
    lifecycle::raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hubbub: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings, env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Library errors may quote a URL they were given, password and all.
            let message = redact_urls_in(&format!("{error:#}"));
            tracing::error!("{message}");
            eprintln!("hubbub: {message}");
            let unreachable = error.chain().any(|cause| {
                let storage = cause.downcast_ref::<StorageError>().or_else(|| {
                    match cause.downcast_ref::<StartupError>() {
                        Some(StartupError::Storage(storage)) => Some(storage),
                        _ => None,
                    }
                });
                matches!(storage, Some(StorageError::Unreachable { .. }))
            });
            if unreachable {
                ExitCode::from(EXIT_DATABASE_UNREACHABLE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(command: Command, settings: Settings, env: Environment) -> anyhow::Result<()> {
    match command {
        Command::Serve { roles } => {
            let app = Application::build(settings, env, &roles)
                .await
                .context("starting hubbub")?;
            app.run_until(lifecycle::shutdown_signal()).await;
            Ok(())
        }
        Command::Migrate { status } => {
            let db = Database::connect_waiting(&settings, &env, lifecycle::notify_status)
                .await
                .context("connecting to the database")?;
            if status {
                for (name, applied) in db.migration_status().await? {
                    println!("{} {name}", if applied { "applied" } else { "pending" });
                }
            } else {
                db.migrate_waiting(&settings, lifecycle::notify_status)
                    .await?;
                tracing::info!("migrations applied");
            }
            Ok(())
        }
        Command::CheckConfig => Ok(()),
    }
}
