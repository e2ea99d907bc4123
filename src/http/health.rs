//! `/healthz` (the process serves) and `/readyz` (its dependencies answer).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, filters::BoxedFilter};

use super::tagged;

/// How long a dependency may take to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

type Probe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// One dependency: when a required one is down the instance is not ready (503);
/// when an optional one is down it is ready but degraded (200).
#[derive(Clone)]
pub struct Check {
    name: &'static str,
    required: bool,
    probe: Probe,
}

impl Check {
    pub fn new<F>(name: &'static str, required: bool, probe: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, bool> + Send + Sync + 'static,
    {
        Self {
            name,
            required,
            probe: Arc::new(probe),
        }
    }
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    checks: BTreeMap<&'static str, &'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

pub async fn readiness(checks: &[Check]) -> (StatusCode, serde_json::Value) {
    let results = join_all(checks.iter().map(|check| async move {
        let up = tokio::time::timeout(PROBE_TIMEOUT, (check.probe)())
            .await
            .unwrap_or(false);
        (check, up)
    }))
    .await;
    let mut report = Readiness {
        status: "ready",
        checks: BTreeMap::new(),
        error: None,
        message: None,
    };
    let mut failed_required = Vec::new();
    for (check, up) in results {
        report
            .checks
            .insert(check.name, if up { "up" } else { "down" });
        if !up {
            if check.required {
                failed_required.push(check.name);
            } else if report.status == "ready" {
                report.status = "degraded";
            }
        }
    }
    let status = if failed_required.is_empty() {
        StatusCode::OK
    } else {
        report.status = "unavailable";
        report.error = Some("dependency_unavailable");
        report.message = Some(format!(
            "required dependency down: {}",
            failed_required.join(", ")
        ));
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        serde_json::to_value(&report).unwrap_or(serde_json::Value::Null),
    )
}

pub fn routes(checks: Vec<Check>) -> BoxedFilter<(Response,)> {
    let checks = Arc::new(checks);
    let healthz = warp::path!("healthz").and(warp::get()).map(|| {
        tagged(
            "none",
            "/healthz",
            warp::reply::json(&serde_json::json!({"status": "ok"})),
        )
    });
    let readyz = warp::path!("readyz").and(warp::get()).then(move || {
        let checks = checks.clone();
        async move {
            let (status, body) = readiness(&checks).await;
            tagged(
                "none",
                "/readyz",
                warp::reply::with_status(warp::reply::json(&body), status).into_response(),
            )
        }
    });
    healthz.or(readyz).unify().boxed()
}
