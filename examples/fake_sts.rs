//! A standalone fake STS for `scripts/bench`: answers AssumeRole and
//! GetSessionToken at once with credentials of the asked duration, and
//! remembers when each call arrived so the benchmark can count calls per
//! second. Not for tests of faults: `tests/it/common/fake_sts.rs` does that.
//!
//! Usage: `fake_sts` binds 127.0.0.1 on an ephemeral port and prints
//! `listening 127.0.0.1:PORT` on stdout. `GET /calls` returns the arrival
//! time of every call so far, one Unix time in milliseconds per line.

use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;

/// Length of the fake session token: real AssumeRole session tokens run to
/// several hundred characters, and the body size is what the benchmark
/// serves, so it should look like the real thing.
const SESSION_TOKEN_LEN: usize = 880;

#[derive(Default)]
struct Calls {
    count: AtomicU64,
    arrivals: Mutex<Vec<u128>>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    println!("listening {addr}");
    std::io::stdout().flush().expect("stdout");

    let calls = Arc::new(Calls::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let calls = calls.clone();
                async move { Ok::<_, Infallible>(handle(&calls, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(calls: &Calls, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.method() == Method::GET && req.uri().path() == "/calls" {
        let list = calls.arrivals.lock().expect("not poisoned");
        let text: String = list.iter().map(|t| format!("{t}\n")).collect();
        return Response::new(Full::new(Bytes::from(text)));
    }

    // Record the arrival before reading the body: that is when the call
    // started from credvend's point of view.
    let arrived = SystemTime::now();
    let n = calls.count.fetch_add(1, Ordering::Relaxed) + 1;
    calls
        .arrivals
        .lock()
        .expect("not poisoned")
        .push(arrived.duration_since(UNIX_EPOCH).unwrap().as_millis());

    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body);
    let field = |name: &str| {
        body.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.replace("%3A", ":").replace("%2F", "/"))
    };
    let action = field("Action").unwrap_or_else(|| "AssumeRole".to_string());
    let seconds: u64 = field("DurationSeconds")
        .and_then(|d| d.parse().ok())
        .unwrap_or(3600);
    let role = field("RoleArn")
        .and_then(|a| a.rsplit('/').next().map(str::to_string))
        .unwrap_or_default();
    let session = field("RoleSessionName").unwrap_or_default();

    let key = format!("ASIAFAKE{n:012}");
    let secret = format!("{n:08}{}", "s".repeat(32));
    let token = format!("{n:08}{}", "T".repeat(SESSION_TOKEN_LEN - 8));
    let expires = rfc3339(arrived + Duration::from_secs(seconds));
    let user = if action == "AssumeRole" {
        format!(
            "<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/{role}/{session}</Arn>\
             <AssumedRoleId>AROAFAKE:{session}</AssumedRoleId></AssumedRoleUser>"
        )
    } else {
        String::new()
    };
    let xml = format!(
        "<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{action}Result>\
         <Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
         <SessionToken>{token}</SessionToken><Expiration>{expires}</Expiration></Credentials>\
         {user}</{action}Result><ResponseMetadata><RequestId>bench-{n}</RequestId>\
         </ResponseMetadata></{action}Response>"
    );
    let mut resp = Response::new(Full::new(Bytes::from(xml)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/xml"),
    );
    resp
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let dt = time::OffsetDateTime::from_unix_timestamp(secs).expect("a valid time");
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    dt.format(&f).expect("formats")
}
