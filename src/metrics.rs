//! Prometheus metrics: one registry per process, served on the admin listener only.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::build_info::BUILD_INFO;

/// Latency buckets in seconds, fine-grained below 20 ms where the targets are.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    outbox_backlog: IntGaugeVec,
}

#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        let build = IntGaugeVec::new(
            Opts::new("hubbub_build_info", "Build of the running binary; always 1"),
            &["version", "build", "commit"],
        )?;
        build
            .with_label_values(&[BUILD_INFO.version, BUILD_INFO.build, BUILD_INFO.commit])
            .set(1);
        registry.register(Box::new(build))?;

        let requests = IntCounterVec::new(
            Opts::new("hubbub_http_requests_total", "HTTP requests answered"),
            &["role", "route", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "hubbub_http_request_duration_seconds",
                "Time from request to response headers",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["role", "route", "method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;

        let outbox_backlog = IntGaugeVec::new(
            Opts::new(
                "hubbub_outbox_backlog",
                "Stored messages not yet acknowledged by the broker",
            ),
            &["outbox"],
        )?;
        registry.register(Box::new(outbox_backlog.clone()))?;

        Ok(Self {
            registry,
            http: HttpMetrics { requests, duration },
            outbox_backlog,
        })
    }

    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        let counter = IntCounter::new(name, help)?;
        self.registry.register(Box::new(counter.clone()))?;
        Ok(counter)
    }

    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        let gauge = IntGauge::new(name, help)?;
        self.registry.register(Box::new(gauge.clone()))?;
        Ok(gauge)
    }

    pub fn outbox_backlog(&self, outbox: &str) -> IntGauge {
        self.outbox_backlog.with_label_values(&[outbox])
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
