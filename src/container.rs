//! The container credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
//!
//! `GET /v1/credentials` serves the role defined by flags and
//! `GET /v1/credentials/NAME` each role of the config file; each opens only
//! with that role's token, sent raw in `Authorization` (sdk-contract
//! section 1). Answers come from memory.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::Shared;
use crate::auth::Check;
use crate::metrics::{Endpoint, Metrics};
use crate::server::{self, json_error, Body, Handler};
use crate::state::{Answer, RoleState};

pub struct Container {
    pub shared: Arc<Shared>,
}

impl Handler for Container {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Container
    }

    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        match self.answer_now(&req) {
            Ok(resp) => resp,
            // Only a role without credentials yet waits (F11 cold start).
            Err(role) => {
                let answer = role
                    .answer_waiting(|| self.shared.clock.now(), false, self.shared.cold_wait)
                    .await;
                respond(&role, answer, "application/json")
            }
        }
    }
}

impl Container {
    /// Everything that needs no waiting, on borrowed state: the hot path
    /// touches no shared reference count but the body's. Err(role) when the
    /// role has no credentials yet and the request should wait for them.
    fn answer_now(&self, req: &Request<Incoming>) -> Result<Response<Body>, Arc<RoleState>> {
        let roles = self.shared.roles.load();
        let Some(role) = roles.by_path(req.uri().path()) else {
            return Ok(server::not_found());
        };
        if req.method() != Method::GET {
            return Ok(server::method_not_allowed("GET"));
        }
        let mut values = req.headers().get_all(AUTHORIZATION).iter();
        let header = values.next().map(|v| v.as_bytes());
        if values.next().is_some() {
            return Ok(json_error(
                StatusCode::BAD_REQUEST,
                "AmbiguousAuthorization",
                "send exactly one Authorization header",
            ));
        }
        let mut check = role.tokens().check(header);
        if check == Check::Wrong {
            // The file may have been rotated since the watcher last looked
            // (it polls every second) and the client read the new token
            // already: look now rather than refuse it.
            let s = &self.shared;
            if crate::app::reload_token(s, role, s.token_grace, s.token_mode) {
                check = role.tokens().check(header);
            }
        }
        match check {
            Check::Current => {}
            Check::Previous => self.shared.metrics.previous_token_used(role.name()),
            denied => return Ok(unauthorized(denied)),
        }
        match role.answer(self.shared.clock.now(), false) {
            Answer::Cold(_) => Err(role.clone()),
            answer => Ok(respond(role, answer, "application/json")),
        }
    }
}

fn unauthorized(check: Check) -> Response<Body> {
    let message = match check {
        Check::Missing => {
            "missing Authorization header: send the content of the file named by \
             AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
        }
        Check::Bearer => {
            "send the raw token in Authorization, without the 'Bearer ' prefix, as AWS SDKs do"
        }
        _ => "the Authorization token does not open this role; re-read the token file",
    };
    json_error(StatusCode::UNAUTHORIZED, "Unauthorized", message)
}

/// Turns a role's answer into a response. Shared with the IMDS endpoint.
pub fn respond(role: &RoleState, answer: Answer, content_type: &'static str) -> Response<Body> {
    let name = role.name();
    match answer {
        Answer::Serve(body) => server::ok(body, content_type),
        Answer::Cold(None) => server::unavailable(
            "CredentialsNotReady",
            &format!("role {name}: the first credentials are still being fetched; retry"),
            1,
        ),
        Answer::Cold(Some(e)) => server::unavailable(
            &e.code,
            &format!("role {name}: no credentials yet; the last STS call failed: {e}"),
            1,
        ),
        Answer::Unavailable(Some(e)) => server::unavailable(
            &e.code,
            &format!("role {name}: no valid credentials to serve; the last STS call failed: {e}"),
            5,
        ),
        Answer::Unavailable(None) => server::unavailable(
            "CredentialsExpiring",
            &format!(
                "role {name}: the credentials reached their serving floor before renewal succeeded"
            ),
            5,
        ),
    }
}
