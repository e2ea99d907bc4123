//! The visitor-identity key: configured, or generated once and kept in the state dir.

use std::path::Path;

use rand::RngCore;
use tokio::io::AsyncWriteExt;

use crate::configuration::{Environment, Secret, Settings};
use crate::domain::VisitorKey;

const SALT_FILE: &str = "visitor-salt";

#[derive(Debug, thiserror::Error)]
pub enum SaltError {
    #[error(
        "visitors.salt_file is required when database.url is set: every instance sharing \
         the database must use the same salt, or one visitor counts as several"
    )]
    SharedDatabaseNeedsSalt,
    #[error("cannot keep the generated salt in {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub async fn load_or_create(
    settings: &Settings,
    env: &Environment,
) -> Result<VisitorKey, SaltError> {
    if let Some(salt) = &settings.visitors.salt {
        return Ok(VisitorKey::new(salt.clone()));
    }
    if settings.database.url.is_some() {
        return Err(SaltError::SharedDatabaseNeedsSalt);
    }
    let path = env.state_dir().join(SALT_FILE);
    read_or_generate(&path).await.map(VisitorKey::new)
}

async fn read_or_generate(path: &Path) -> Result<Secret, SaltError> {
    let io = |source| SaltError::Io {
        path: path.to_path_buf(),
        source,
    };
    match tokio::fs::read_to_string(path).await {
        Ok(text) if !text.trim().is_empty() => return Ok(Secret::new(text.trim())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let salt = hex::encode(bytes);
    // Written to a temporary name and renamed, so a crash never leaves half a salt.
    let tmp = path.with_extension("tmp");
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    let mut file = options.open(&tmp).await.map_err(io)?;
    file.write_all(salt.as_bytes()).await.map_err(io)?;
    file.sync_all().await.map_err(io)?;
    tokio::fs::rename(&tmp, path).await.map_err(io)?;
    Ok(Secret::new(salt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn generated_once_then_reused_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join(SALT_FILE);
        let first = read_or_generate(&path).await.expect("salt");
        let second = read_or_generate(&path).await.expect("salt");
        assert_eq!(first.expose(), second.expose());
        assert_eq!(first.expose().len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
