//! The HTTP plumbing shared by every listener: accepting, connection limits,
//! header limits and timeouts, graceful drain, and JSON error responses.
//!
//! Handlers answer from memory; nothing here may block on STS. Every error
//! response is `{"code","message"}` JSON, never a redirect.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Endpoint, Metrics};

pub type Body = Full<Bytes>;

/// Limits applied to every connection of a listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// IP TTL / hop limit set on accepted sockets (IMDS only).
    pub hop_limit: Option<u32>,
}

/// Largest request head accepted (hyper answers 431 beyond it).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A request handler for one listener kind.
pub trait Handler: Send + Sync + 'static {
    fn endpoint(&self) -> Endpoint;
    fn metrics(&self) -> &Metrics;
    fn handle(
        &self,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Response<Body>> + Send;
}

/// Binds every address, failing with a message that names the flag.
pub async fn bind(flag: &str, addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for a in addrs {
        let l = TcpListener::bind(a).await.map_err(|e| {
            anyhow::anyhow!(
                "{flag} {a}: cannot listen ({e}); pick a free port or stop what holds it"
            )
        })?;
        out.push(l);
    }
    Ok(out)
}

/// Accepts and serves connections until `stop` fires, then lets requests in
/// flight finish for at most `drain`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    stop: CancellationToken,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            handler.metrics().connections_refused.inc();
            drop(stream);
            continue;
        };
        prepare(&stream, limits.hop_limit);
        let h = handler.clone();
        let svc = service_fn(move |req| {
            let h = h.clone();
            async move { Ok::<_, Infallible>(timed(&*h, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(64)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}

fn prepare(stream: &TcpStream, hop_limit: Option<u32>) {
    let _ = stream.set_nodelay(true);
    if let Some(hops) = hop_limit {
        let sock = socket2::SockRef::from(stream);
        let is_v6 = stream.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        let r = if is_v6 {
            sock.set_unicast_hops_v6(hops)
        } else {
            sock.set_ttl(hops)
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot set the IMDS hop limit on a connection");
        }
    }
}

async fn timed<H: Handler>(h: &H, req: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let resp = if has_body(&req) {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BodyNotAllowed",
            "requests to credvend carry no body",
        )
    } else {
        h.handle(req).await
    };
    h.metrics().request(
        h.endpoint(),
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

fn has_body(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    // hyper has validated Content-Length; "00" is still no body.
    let length = h
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    h.contains_key(TRANSFER_ENCODING) || length.is_some_and(|n| n > 0)
}

/// A `{"code","message"}` JSON error.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "code": code, "message": message });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// 405 with the `Allow` header.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        &format!("this path accepts {allow} only"),
    );
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

pub fn not_found() -> Response<Body> {
    json_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        "no such path on this credvend endpoint",
    )
}

/// A 200 with a pre-rendered body.
pub fn ok(body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

/// A retryable 503 with `Retry-After`.
pub fn unavailable(code: &str, message: &str, retry_after_s: u64) -> Response<Body> {
    let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, code, message);
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after_s));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_get_the_hop_limit() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = TcpListener::bind(addr).await else {
                continue; // no IPv6 on this host
            };
            let a = l.local_addr().unwrap();
            let _client = TcpStream::connect(a).await.unwrap();
            let (server, _) = l.accept().await.unwrap();
            prepare(&server, Some(1));
            let sock = socket2::SockRef::from(&server);
            let hops = if a.is_ipv6() {
                sock.unicast_hops_v6()
            } else {
                sock.ttl()
            };
            assert_eq!(hops.unwrap(), 1, "{addr}");
        }
    }
}
