//! Prometheus metrics: a struct of pre-registered handles.
//!
//! Label values come only from configuration (role names) or fixed sets
//! (endpoint kind, status code, outcome, error class); never from a request
//! path, a token, an ARN or a key id, so no client can grow the series count.

use prometheus::core::{AtomicF64, GenericGaugeVec};
use std::sync::Arc;

use crate::reqstats::{Exported, RequestStats};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

type GaugeVec = GenericGaugeVec<AtomicF64>;

/// Which listener answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Container = 0,
    Imds = 1,
    Admin = 2,
}

/// Outcome label of `credvend_refresh_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Error,
    Throttled,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Error => "error",
            Outcome::Throttled => "throttled",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    refresh_total: IntCounterVec,
    refresh_errors: IntCounterVec,
    refresh_duration: HistogramVec,
    expiry: GaugeVec,
    last_refresh: GaugeVec,
    degraded: IntGaugeVec,
    token_reloads: IntCounterVec,
    token_grace: IntCounterVec,
    /// `requests_total` and `request_duration_seconds`, sharded per thread.
    requests: Arc<RequestStats>,
    pub ready: IntGauge,
    pub roles: IntGauge,
    pub config_reloads: IntCounterVec,
    pub imds_tokens: IntCounter,
    pub connections_refused: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("credvend");

        let refresh_total = IntCounterVec::new(
            opts(
                "refresh_total",
                "STS calls to renew credentials, by outcome.",
            ),
            &["role", "outcome"],
        )
        .unwrap();
        let refresh_errors = IntCounterVec::new(
            opts(
                "refresh_errors_total",
                "Failed renewals by error class (throttled, transient, needs_operator).",
            ),
            &["role", "class"],
        )
        .unwrap();
        let refresh_duration = HistogramVec::new(
            HistogramOpts::new("refresh_duration_seconds", "Time taken by one STS call.")
                .namespace("credvend")
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            &["role"],
        )
        .unwrap();
        let expiry = GaugeVec::new(
            opts(
                "credentials_expiry_timestamp_seconds",
                "Unix time at which the credentials being served expire.",
            ),
            &["role"],
        )
        .unwrap();
        let last_refresh = GaugeVec::new(
            opts(
                "credentials_last_refresh_timestamp_seconds",
                "Unix time of the last successful renewal.",
            ),
            &["role"],
        )
        .unwrap();
        let degraded = IntGaugeVec::new(
            opts(
                "degraded",
                "1 while the last renewal failed but earlier credentials are still served.",
            ),
            &["role"],
        )
        .unwrap();
        let token_reloads = IntCounterVec::new(
            opts("token_reloads_total", "Auth token file changes picked up."),
            &["role"],
        )
        .unwrap();
        let token_grace = IntCounterVec::new(
            opts(
                "token_previous_accepted_total",
                "Requests accepted with the previous auth token during its grace period.",
            ),
            &["role"],
        )
        .unwrap();
        let ready = IntGauge::with_opts(opts(
            "ready",
            "1 when every role holds credentials above its serving floor.",
        ))
        .unwrap();
        let roles = IntGauge::with_opts(opts("roles", "Roles configured.")).unwrap();
        let config_reloads = IntCounterVec::new(
            opts(
                "config_reloads_total",
                "Configuration reloads (SIGHUP), by outcome.",
            ),
            &["outcome"],
        )
        .unwrap();
        let imds_tokens = IntCounter::with_opts(opts(
            "imds_tokens_issued_total",
            "IMDSv2 session tokens issued.",
        ))
        .unwrap();
        let connections_refused = IntCounter::with_opts(opts(
            "connections_refused_total",
            "Connections closed at once because --max-connections was reached.",
        ))
        .unwrap();
        let build_info = IntGaugeVec::new(
            opts("build_info", "Always 1; labelled with the version."),
            &["version"],
        )
        .unwrap();
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let requests = RequestStats::new();
        for c in ["success", "error"] {
            config_reloads.with_label_values(&[c]);
        }

        reg(Box::new(refresh_total.clone()));
        reg(Box::new(refresh_errors.clone()));
        reg(Box::new(refresh_duration.clone()));
        reg(Box::new(expiry.clone()));
        reg(Box::new(last_refresh.clone()));
        reg(Box::new(degraded.clone()));
        reg(Box::new(token_reloads.clone()));
        reg(Box::new(token_grace.clone()));
        reg(Box::new(Exported(requests.clone())));
        reg(Box::new(ready.clone()));
        reg(Box::new(roles.clone()));
        reg(Box::new(config_reloads.clone()));
        reg(Box::new(imds_tokens.clone()));
        reg(Box::new(connections_refused.clone()));
        reg(Box::new(build_info));

        Metrics {
            registry,
            refresh_total,
            refresh_errors,
            refresh_duration,
            expiry,
            last_refresh,
            degraded,
            token_reloads,
            token_grace,
            requests,
            ready,
            roles,
            config_reloads,
            imds_tokens,
            connections_refused,
        }
    }

    /// Creates a role's series at zero, so dashboards and alerts see the
    /// role before its first renewal.
    pub fn add_role(&self, role: &str) {
        for o in ["success", "error", "throttled"] {
            self.refresh_total.with_label_values(&[role, o]);
        }
        for c in ["throttled", "transient", "needs_operator"] {
            self.refresh_errors.with_label_values(&[role, c]);
        }
        self.refresh_duration.with_label_values(&[role]);
        self.degraded.with_label_values(&[role]);
        self.token_reloads.with_label_values(&[role]);
        self.token_grace.with_label_values(&[role]);
    }

    /// Drops a removed role's series.
    pub fn remove_role(&self, role: &str) {
        for o in ["success", "error", "throttled"] {
            let _ = self.refresh_total.remove_label_values(&[role, o]);
        }
        for c in ["throttled", "transient", "needs_operator"] {
            let _ = self.refresh_errors.remove_label_values(&[role, c]);
        }
        let _ = self.refresh_duration.remove_label_values(&[role]);
        let _ = self.expiry.remove_label_values(&[role]);
        let _ = self.last_refresh.remove_label_values(&[role]);
        let _ = self.degraded.remove_label_values(&[role]);
        let _ = self.token_reloads.remove_label_values(&[role]);
        let _ = self.token_grace.remove_label_values(&[role]);
    }

    pub fn refreshed(&self, role: &str, outcome: Outcome, class: Option<&str>, seconds: f64) {
        self.refresh_total
            .with_label_values(&[role, outcome.label()])
            .inc();
        if let Some(class) = class {
            self.refresh_errors.with_label_values(&[role, class]).inc();
        }
        self.refresh_duration
            .with_label_values(&[role])
            .observe(seconds);
    }

    pub fn credentials(&self, role: &str, expires_unix: f64, refreshed_unix: f64) {
        self.expiry.with_label_values(&[role]).set(expires_unix);
        self.last_refresh
            .with_label_values(&[role])
            .set(refreshed_unix);
    }

    pub fn set_degraded(&self, role: &str, degraded: bool) {
        self.degraded
            .with_label_values(&[role])
            .set(degraded as i64);
    }

    pub fn token_reloaded(&self, role: &str) {
        self.token_reloads.with_label_values(&[role]).inc();
    }

    pub fn previous_token_used(&self, role: &str) {
        self.token_grace.with_label_values(&[role]).inc();
    }

    /// Counts one answered request. Called on the request path: three
    /// uncontended atomic adds, no hashing, no lock.
    pub fn request(&self, ep: Endpoint, status: u16, seconds: f64) {
        self.requests.record(ep as usize, status, seconds);
    }

    /// The exposition text.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory cannot fail");
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
