//! A scriptable fake STS for faults moto cannot produce: throttling, 5xx,
//! slow answers, AccessDenied, ExpiredToken, InvalidIdentityToken, short
//! sessions. It speaks the STS query protocol well enough for aws-sdk-rust,
//! and records every call so tests can count and inspect them.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// What the next call gets.
#[derive(Debug, Clone)]
pub enum Step {
    /// Credentials for the requested DurationSeconds.
    Ok,
    /// Credentials that expire after this long, whatever was asked.
    OkFor(Duration),
    /// An STS error: HTTP status and error code.
    Fail(u16, &'static str),
    /// An STS error with its message.
    FailWith(u16, &'static str, &'static str),
    /// A "success" whose credentials expired a minute ago.
    Expired,
    /// Wait, then do the inner step.
    Slow(Duration, Box<Step>),
}

impl Step {
    pub fn throttle() -> Step {
        Step::Fail(400, "Throttling")
    }
    pub fn deny() -> Step {
        Step::Fail(403, "AccessDenied")
    }
    pub fn unavailable() -> Step {
        Step::Fail(503, "ServiceUnavailable")
    }
}

#[derive(Default)]
struct Inner {
    script: Mutex<VecDeque<Step>>,
    default: Mutex<Option<Step>>,
    per_role: Mutex<HashMap<String, Step>>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    secrets: Mutex<Vec<String>>,
    requests: Mutex<Vec<HashMap<String, String>>>,
}

#[derive(Clone)]
pub struct FakeSts {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl FakeSts {
    /// Starts on an ephemeral loopback port, on its own thread.
    pub fn start() -> FakeSts {
        let inner = Arc::new(Inner::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = inner.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(handle(&state, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        FakeSts { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Queues steps for the next calls.
    pub fn push(&self, steps: impl IntoIterator<Item = Step>) {
        self.inner.script.lock().unwrap().extend(steps);
    }
    /// What calls get once the queue is empty (default: `Step::Ok`).
    pub fn set_default(&self, step: Step) {
        *self.inner.default.lock().unwrap() = Some(step);
    }
    /// What calls for the role named `name` (the last part of its ARN) get,
    /// ahead of the script and the default.
    pub fn set_role(&self, name: &str, step: Step) {
        self.inner
            .per_role
            .lock()
            .unwrap()
            .insert(name.to_string(), step);
    }
    /// Calls made for one role (by the last part of its ARN).
    pub fn calls_for(&self, name: &str) -> usize {
        let suffix = format!("/{name}");
        self.requests()
            .iter()
            .filter(|r| r.get("RoleArn").is_some_and(|a| a.ends_with(&suffix)))
            .count()
    }
    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }
    /// Every access key id, secret and session token handed out.
    pub fn secrets(&self) -> Vec<String> {
        self.inner.secrets.lock().unwrap().clone()
    }
    /// The form parameters of every call.
    pub fn requests(&self) -> Vec<HashMap<String, String>> {
        self.inner.requests.lock().unwrap().clone()
    }
}

async fn handle(state: &Inner, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let n = state.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let now_in = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now_in, Ordering::SeqCst);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let form = parse_form(&String::from_utf8_lossy(&body));
    state.requests.lock().unwrap().push(form.clone());
    let role = form
        .get("RoleArn")
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or("");
    let rule = state.per_role.lock().unwrap().get(role).cloned();
    let step = rule
        .or_else(|| state.script.lock().unwrap().pop_front())
        .or_else(|| state.default.lock().unwrap().clone())
        .unwrap_or(Step::Ok);
    let resp = respond(state, n, &form, step).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    resp
}

async fn respond(
    state: &Inner,
    n: usize,
    form: &HashMap<String, String>,
    mut step: Step,
) -> Response<Full<Bytes>> {
    while let Step::Slow(d, inner) = step {
        tokio::time::sleep(d).await;
        step = *inner;
    }
    let action = form.get("Action").cloned().unwrap_or_default();
    let lifetime = match step {
        Step::Fail(status, code) => return error(status, code, &format!("fake STS says {code}")),
        Step::FailWith(status, code, message) => return error(status, code, message),
        Step::OkFor(d) => d,
        _ => Duration::from_secs(
            form.get("DurationSeconds")
                .and_then(|d| d.parse().ok())
                .unwrap_or(3600),
        ),
    };
    let key = format!("ASIAFAKE{n:012}");
    let secret = format!("fakesecret{n:06}{}", "x".repeat(24));
    let token = format!("FAKESESSIONTOKEN{n:06}{}", "t".repeat(300));
    state
        .secrets
        .lock()
        .unwrap()
        .extend([key.clone(), secret.clone(), token.clone()]);
    let expires = match step {
        Step::Expired => format_time(SystemTime::now() - Duration::from_secs(60)),
        _ => format_time(SystemTime::now() + lifetime),
    };
    let session = form.get("RoleSessionName").cloned().unwrap_or_default();
    let role = form
        .get("RoleArn")
        .and_then(|a| a.rsplit('/').next().map(str::to_string))
        .unwrap_or_default();
    let user = if action == "GetSessionToken" {
        String::new()
    } else {
        format!(
            "<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/{role}/{session}</Arn>\
             <AssumedRoleId>AROAFAKE:{session}</AssumedRoleId></AssumedRoleUser>"
        )
    };
    let xml = format!(
        "<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{action}Result>\
         <Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
         <SessionToken>{token}</SessionToken><Expiration>{expires}</Expiration></Credentials>\
         {user}</{action}Result><ResponseMetadata><RequestId>req-{n}</RequestId>\
         </ResponseMetadata></{action}Response>"
    );
    Response::builder()
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(xml)))
        .unwrap()
}

fn error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    let xml = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
         <Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>\
         <RequestId>req-err</RequestId></ErrorResponse>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(xml)))
        .unwrap()
}

fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let dt = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    dt.format(&f).unwrap()
}

fn parse_form(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
