//! The admin listener: `/metrics`, `/healthz` and `/readyz`.
//!
//! Readiness is the single source of truth for "credentials exist and are
//! above their floor for every role"; it is what Kubernetes probes and what
//! gates `READY=1` to systemd. Nothing secret is ever rendered here.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::app::Shared;
use crate::metrics::{Endpoint, Metrics};
use crate::server::{self, Body, Handler};

pub struct Admin {
    pub shared: Arc<Shared>,
}

impl Handler for Admin {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Admin
    }

    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
            return server::not_found();
        }
        if req.method() != Method::GET {
            return server::method_not_allowed("GET");
        }
        match path {
            "/metrics" => {
                self.shared.update_ready();
                server::ok(
                    Bytes::from(self.shared.metrics.render()),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            }
            "/healthz" => server::ok(
                Bytes::from_static(b"{\"status\":\"ok\"}"),
                "application/json",
            ),
            _ => self.readyz(),
        }
    }
}

impl Admin {
    fn readyz(&self) -> Response<Body> {
        let not_ready = self.shared.not_ready();
        self.shared.update_ready();
        if not_ready.is_empty() {
            let n = self.shared.roles.load().list.len();
            let body = json!({ "status": "ready", "roles": n });
            return server::ok(Bytes::from(body.to_string()), "application/json");
        }
        let roles: Vec<_> = not_ready
            .iter()
            .map(|(role, reason)| json!({ "role": role, "reason": reason }))
            .collect();
        let stopping = self.shared.stopping.load(Ordering::Relaxed);
        let body = json!({
            "code": if stopping { "ShuttingDown" } else { "NotReady" },
            "message": format!("{} role(s) not ready", roles.len()),
            "roles": roles,
        });
        let mut r = Response::new(http_body_util::Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }
}
