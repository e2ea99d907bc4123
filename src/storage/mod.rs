//! The database: PostgreSQL in production, SQLite embedded; migrations.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, DatabaseBackend, DatabaseConnection, DbErr, Statement, Value};
use tokio::time::Instant;

use crate::configuration::{Environment, Secret, Settings, redact_urls_in};
use crate::http::ApiError;

/// The first pause between two connection attempts at start; it doubles up to
/// [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("database.password: {0}")]
    Password(String),
    #[error("cannot connect to the database: {}", redact_urls_in(&.0.to_string()))]
    Connect(#[source] DbErr),
    #[error(
        "the database did not accept a connection within {waited_secs} s \
         (database.startup_wait_secs; {attempts} attempts); the last error: {last_error}"
    )]
    Unreachable {
        waited_secs: u64,
        attempts: u32,
        last_error: String,
    },
    #[error("migrating the database failed: {0}")]
    Migrate(#[source] DbErr),
}

/// Runs `attempt` until it succeeds, fails for good, or `database.startup_wait_secs`
/// have passed. `transient` picks the failures worth waiting out (the database not
/// up yet) and returns their cause; each is logged and handed to `on_retry`, and
/// the next attempt follows after 250 ms, doubling up to 10 s.
async fn retry_while_starting<T, Fut>(
    settings: &Settings,
    mut on_retry: impl FnMut(&str),
    mut attempt: impl FnMut() -> Fut,
    transient: impl Fn(&StorageError) -> Option<&DbErr>,
) -> Result<T, StorageError>
where
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let wait = Duration::from_secs(settings.database.startup_wait_secs);
    let started = Instant::now();
    let deadline = started + wait;
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempts: u32 = 0;
    loop {
        attempts = attempts.saturating_add(1);
        let error = match attempt().await {
            Ok(value) => {
                if attempts > 1 {
                    tracing::info!(
                        attempts,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "the database accepts connections"
                    );
                }
                return Ok(value);
            }
            Err(error) => error,
        };
        let Some(cause) = transient(&error) else {
            return Err(error);
        };
        let last_error = redact_urls_in(&cause.to_string());
        let now = Instant::now();
        if now >= deadline {
            return Err(StorageError::Unreachable {
                waited_secs: wait.as_secs(),
                attempts,
                last_error,
            });
        }
        let pause = delay.min(deadline - now);
        tracing::warn!(
            error = %last_error,
            attempt = attempts,
            retry_in_ms = pause.as_millis() as u64,
            gives_up_in_s = (deadline - now).as_secs(),
            "waiting for the database"
        );
        on_retry(&format!(
            "waiting for the database (attempt {attempts}, giving up in {} s): {last_error}",
            (deadline - now).as_secs()
        ));
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

#[derive(Clone, Debug)]
pub struct Database {
    connection: DatabaseConnection,
}

impl Database {
    /// Connects with the configured URL (password from `database.password(_file)`
    /// when given), creating the SQLite state directory when needed.
    pub async fn connect(settings: &Settings, env: &Environment) -> Result<Self, StorageError> {
        if settings.database.url.is_none() {
            let dir = env.state_dir();
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|source| StorageError::StateDir { path: dir, source })?;
        }
        let mut options = match &settings.database.url {
            // sea-orm records its connect options, URL included, in a trace span
            // (and sqlx logs a slow first connection inside it): the URL it gets
            // carries no password; sqlx's options get it directly.
            Some(configured) if configured.scheme().starts_with("postgres") => {
                let (url, in_url) = configured
                    .without_password()
                    .map_err(StorageError::Password)?;
                let password = settings
                    .database
                    .password
                    .clone()
                    .or(in_url.map(Secret::new));
                let mut options = ConnectOptions::new(url.to_string());
                if let Some(password) = password {
                    options.map_sqlx_postgres_opts(move |pg| pg.password(password.expose()));
                }
                options
            }
            Some(configured) => ConnectOptions::new(match &settings.database.password {
                Some(password) => configured
                    .with_password(password.expose())
                    .map_err(StorageError::Password)?
                    .to_string(),
                None => configured.url().to_string(),
            }),
            None => ConnectOptions::new(settings.database_url(env)),
        };
        options
            .max_connections(settings.database.max_connections)
            .min_connections(0)
            .connect_timeout(Duration::from_millis(settings.database.acquire_timeout_ms))
            .acquire_timeout(Duration::from_millis(settings.database.acquire_timeout_ms))
            .idle_timeout(Duration::from_secs(300))
            // A connection that died with the server is noticed before it is used.
            .test_before_acquire(true)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|opts| {
                opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
            });
        let connection = sea_orm::Database::connect(options)
            .await
            .map_err(StorageError::Connect)?;
        Ok(Self { connection })
    }

    /// [`Database::connect`], retried with backoff (250 ms doubling up to 10 s)
    /// while PostgreSQL does not accept the connection, for up to
    /// `database.startup_wait_secs`: a cold cluster boots in any order, and an app
    /// host that comes up before its database waits for it instead of failing.
    /// Every failed attempt is logged and handed to `on_retry` (which may tell
    /// systemd); past the deadline the error is [`StorageError::Unreachable`].
    /// SQLite is local and is tried once.
    pub async fn connect_waiting(
        settings: &Settings,
        env: &Environment,
        on_retry: impl FnMut(&str),
    ) -> Result<Self, StorageError> {
        let postgres = settings
            .database
            .url
            .as_ref()
            .is_some_and(|url| url.scheme().starts_with("postgres"));
        retry_while_starting(
            settings,
            on_retry,
            || Self::connect(settings, env),
            |error| match error {
                StorageError::Connect(error) if postgres => Some(error),
                _ => None,
            },
        )
        .await
    }

    /// [`Database::migrate`], tried again as [`Database::connect_waiting`] does
    /// while it fails for want of a connection: a PostgreSQL that has just come up
    /// may accept the first connection and be slow to give the migration another
    /// within `database.acquire_timeout_ms`. Any other failure is final.
    pub async fn migrate_waiting(
        &self,
        settings: &Settings,
        on_retry: impl FnMut(&str),
    ) -> Result<(), StorageError> {
        let postgres = self.backend() == DatabaseBackend::Postgres;
        retry_while_starting(
            settings,
            on_retry,
            || self.migrate(),
            |error| match error {
                StorageError::Migrate(error @ (DbErr::ConnectionAcquire(_) | DbErr::Conn(_)))
                    if postgres =>
                {
                    Some(error)
                }
                _ => None,
            },
        )
        .await
    }

    /// For unit tests: a SQLite database of its own in a temporary state
    /// directory (kept while the returned directory lives), not yet migrated.
    #[cfg(test)]
    pub(crate) async fn scratch() -> (tempfile::TempDir, Self) {
        let state = tempfile::tempdir().expect("tempdir");
        let env = Environment {
            state_directory: Some(state.path().to_path_buf()),
            ..Environment::default()
        };
        let settings = Settings::from_toml("", &env).expect("settings");
        let db = Self::connect(&settings, &env).await.expect("sqlite");
        (state, db)
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.connection
    }

    pub fn backend(&self) -> DatabaseBackend {
        self.connection.get_database_backend()
    }

    /// Applies the pending migrations. A database already migrated by a newer
    /// release (this is a rollback of the code; migrations are forward-only and
    /// keep the previous release working) is left as it is, with a warning:
    /// sea-orm would refuse it, and the rolled-back roles would never start.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let newer = self.newer_migrations().await?;
        if newer.is_empty() {
            return Migrator::up(&self.connection, None)
                .await
                .map_err(StorageError::Migrate);
        }
        let pending: Vec<String> = self
            .migration_status()
            .await?
            .into_iter()
            .filter(|(_, applied)| !applied)
            .map(|(name, _)| name)
            .collect();
        if !pending.is_empty() {
            return Err(StorageError::Migrate(DbErr::Custom(format!(
                "the database has migrations of a newer release ({}) but lacks {} of this one: \
                 run the newer release",
                newer.join(", "),
                pending.join(", ")
            ))));
        }
        tracing::warn!(
            newer = ?newer,
            "the database was migrated by a newer release; nothing to apply"
        );
        Ok(())
    }

    /// Every migration of this release with whether it has been applied (those of
    /// a newer release, if any, are left out).
    pub async fn migration_status(&self) -> Result<Vec<(String, bool)>, StorageError> {
        let applied = self.applied_migrations().await?;
        Ok(Migrator::migrations()
            .iter()
            .map(|m| (m.name().to_owned(), applied.contains(m.name())))
            .collect())
    }

    /// Migrations recorded as applied that this release does not know.
    async fn newer_migrations(&self) -> Result<Vec<String>, StorageError> {
        let known: std::collections::HashSet<String> = Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        let mut newer: Vec<String> = self
            .applied_migrations()
            .await?
            .into_iter()
            .filter(|name| !known.contains(name))
            .collect();
        newer.sort();
        Ok(newer)
    }

    /// The names in sea-orm's `seaql_migrations` (none before the first migration).
    async fn applied_migrations(&self) -> Result<std::collections::HashSet<String>, StorageError> {
        use sea_orm::ConnectionTrait;
        let table_exists = match self.backend() {
            DatabaseBackend::Postgres => {
                "SELECT to_regclass('seaql_migrations') IS NOT NULL AS present"
            }
            _ => {
                "SELECT EXISTS (SELECT 1 FROM sqlite_master \
                   WHERE type = 'table' AND name = 'seaql_migrations') AS present"
            }
        };
        let present: bool = self
            .connection
            .query_one_raw(statement(self.backend(), table_exists, vec![]))
            .await
            .map_err(StorageError::Migrate)?
            .map(|row| row.try_get("", "present"))
            .transpose()
            .map_err(StorageError::Migrate)?
            .unwrap_or(false);
        if !present {
            return Ok(std::collections::HashSet::new());
        }
        let rows = self
            .connection
            .query_all_raw(statement(
                self.backend(),
                "SELECT version FROM seaql_migrations",
                vec![],
            ))
            .await
            .map_err(StorageError::Migrate)?;
        rows.iter()
            .map(|row| row.try_get("", "version"))
            .collect::<Result<_, _>>()
            .map_err(StorageError::Migrate)
    }

    pub async fn ping(&self) -> bool {
        self.connection.ping().await.is_ok()
    }
}

/// Logs what went wrong and answers 503 (the database is down or overloaded) or
/// 500, never showing the database's own words to the client.
pub fn to_api_error(error: DbErr, context: &'static str) -> ApiError {
    let unavailable = matches!(error, DbErr::ConnectionAcquire(_) | DbErr::Conn(_))
        || is_connection_failure(&error);
    if unavailable {
        tracing::warn!(%error, context, "database unavailable");
        ApiError::unavailable("database")
    } else {
        tracing::error!(%error, context, "database error");
        ApiError::internal()
    }
}

fn is_connection_failure(error: &DbErr) -> bool {
    let Some(e) = sqlx_error(error) else {
        return false;
    };
    matches!(
        e,
        sea_orm::sqlx::Error::Io(_)
            | sea_orm::sqlx::Error::PoolTimedOut
            | sea_orm::sqlx::Error::PoolClosed
            | sea_orm::sqlx::Error::WorkerCrashed
    ) || sqlstate(error).is_some_and(|code| code.starts_with("57P") || code.starts_with("08"))
}

/// PostgreSQL gave up waiting for a lock (`lock_timeout`): SQLSTATE 55P03.
pub fn is_lock_timeout(error: &DbErr) -> bool {
    sqlstate(error).is_some_and(|code| code == "55P03")
}

fn sqlx_error(error: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    match error {
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => Some(e.as_ref()),
        _ => None,
    }
}

fn sqlstate(error: &DbErr) -> Option<String> {
    sqlx_error(error)?
        .as_database_error()?
        .code()
        .map(|code| code.into_owned())
}

/// A statement written with `$n` placeholders, for either backend (SQLite reads
/// `?n` the same way).
pub fn statement(backend: DatabaseBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DatabaseBackend::Sqlite => sql.replace('$', "?"),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

#[cfg(test)]
mod tests {
    use sea_orm::ConnectionTrait;

    use super::*;

    /// The code rolled back after a newer release migrated the database: its
    /// `hubbub migrate` (and `hubbub-migrate.service`, which the roles require)
    /// must succeed, or the rollback leaves the roles down.
    #[tokio::test]
    async fn a_database_migrated_by_a_newer_release_is_left_as_it_is() {
        let (_state, db) = Database::scratch().await;
        db.migrate().await.expect("first migration");
        db.connection()
            .execute_unprepared(
                "INSERT INTO seaql_migrations (version, applied_at) \
                 VALUES ('m20991231_000099_of_a_newer_release', 0)",
            )
            .await
            .expect("a newer release's migration");
        db.migrate().await.expect("nothing to apply, no error");
        let status = db.migration_status().await.expect("status");
        assert!(status.iter().all(|(_, applied)| *applied), "{status:?}");
        assert_eq!(status.len(), Migrator::migrations().len());
    }
}
