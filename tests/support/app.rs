//! Runs hubbub in-process on free ports, the way the binary would.

use std::time::Duration;

use hubbub::configuration::{Environment, Settings};
use hubbub::domain::Role;
use hubbub::startup::Application;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestApp {
    /// `http://127.0.0.1:PORT` of the public listener.
    pub address: String,
    /// `http://127.0.0.1:PORT` of the admin (metrics) listener.
    pub admin_address: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _state: TempDir,
}

/// Settings for a test: the given TOML plus listeners on free ports; the state
/// directory (SQLite, generated salt) is a fresh temp dir.
pub async fn spawn_app(toml: &str) -> anyhow::Result<TestApp> {
    spawn_roles(toml, &[]).await
}

pub async fn spawn_roles(toml: &str, roles: &[Role]) -> anyhow::Result<TestApp> {
    let state = tempfile::tempdir()?;
    let env = Environment {
        state_directory: Some(state.path().to_path_buf()),
        ..Environment::default()
    };
    let mut settings = Settings::from_toml(toml, &env)?;
    settings.http.listen = "127.0.0.1:0".parse()?;
    settings.admin.listen = "127.0.0.1:0".parse()?;
    settings.shutdown_timeout_secs = 2;
    let app = Application::build(settings, env, roles).await?;
    let address = format!("http://{}", app.public_addr());
    let admin_address = format!("http://{}", app.admin_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    Ok(TestApp {
        address,
        admin_address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        stop: Some(stop),
        task: Some(task),
        _state: state,
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request to hubbub")
    }

    /// The admin listener's Prometheus text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin_address))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    }

    /// Stops the app and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// The value of an unlabelled counter or gauge in Prometheus text, 0 when absent.
pub fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
