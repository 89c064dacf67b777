//! Issue 3: the renewal loop on tokio's paused clock (no real sleeping),
//! with a scripted in-process fetcher standing in for STS. Each test would
//! fail without the behaviour it names.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use clap::Parser;
use credvend::cli::{Cli, Command};
use credvend::config::{self, RoleSpec};
use credvend::creds::Credentials;
use credvend::metrics::Metrics;
use credvend::refresh::{Backoff, Refresher, StsGate};
use credvend::state::{Answer, Clock, RoleState};
use credvend::sts::{BoxFuture, ErrorClass, FetchError, Fetcher};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::common::TempDir;

const MIN: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
enum Reply {
    Ok,
    Fail(ErrorClass, &'static str),
    Slow(Duration, Box<Reply>),
}

/// A fake STS at the fetcher level: scripted replies, a record of call
/// times, and a check that calls never overlap.
struct Scripted {
    clock: Clock,
    lifetime: Duration,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    calls: Mutex<Vec<tokio::time::Instant>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Scripted {
    fn new(clock: Clock, lifetime: Duration) -> Arc<Scripted> {
        Arc::new(Scripted {
            clock,
            lifetime,
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Reply::Ok),
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }
    fn push(&self, r: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().extend(r);
    }
    fn set_default(&self, r: Reply) {
        *self.default.lock().unwrap() = r;
    }
    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
    fn call_times(&self) -> Vec<tokio::time::Instant> {
        self.calls.lock().unwrap().clone()
    }
}

impl Fetcher for Scripted {
    fn fetch(&self) -> BoxFuture<'_, Result<Credentials, FetchError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(tokio::time::Instant::now());
            let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(n, Ordering::SeqCst);
            let mut reply = {
                let next = self.script.lock().unwrap().pop_front();
                next.unwrap_or_else(|| self.default.lock().unwrap().clone())
            };
            while let Reply::Slow(d, inner) = reply {
                tokio::time::sleep(d).await;
                reply = *inner;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            match reply {
                Reply::Fail(class, code) => Err(FetchError::new(class, code, "scripted failure")),
                _ => {
                    let k = self.calls();
                    Ok(Credentials::new(
                        format!("ASIASCRIPTED{k:08}"),
                        format!("secret-{k}"),
                        format!("token-{k}"),
                        self.clock.now() + self.lifetime,
                        None,
                    )
                    .unwrap())
                }
            }
        })
    }
}

fn spec(dir: &TempDir, extra: &[&str]) -> RoleSpec {
    let token = dir.join("token").display().to_string();
    let mut args = vec![
        "credvend",
        "serve",
        "--role-arn",
        "arn:aws:iam::123456789012:role/demo",
        "--token-file",
        &token,
    ];
    args.extend_from_slice(extra);
    let Command::Serve(serve) = Cli::try_parse_from(args).unwrap().command else {
        unreachable!()
    };
    config::load(&serve).unwrap().roles.remove(0)
}

struct Harness {
    role: Arc<RoleState>,
    sts: Arc<Scripted>,
    clock: Clock,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    first: Option<oneshot::Receiver<credvend::refresh::FirstOutcome>>,
    _dir: TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts one role's refresh loop on the paused clock.
fn start(extra: &[&str], lifetime: Duration, script: &[Reply], cap: Duration) -> Harness {
    let dir = TempDir::new("renewal");
    let spec = spec(&dir, extra);
    let (tokens, _) = credvend::auth::load_or_create(&spec.token_file, 0o600).unwrap();
    let role = Arc::new(RoleState::new(spec, tokens));
    let clock = Clock::tokio();
    let sts = Scripted::new(clock.clone(), lifetime);
    sts.push(script.iter().cloned());
    let metrics = Arc::new(Metrics::new());
    metrics.add_role("default");
    let cancel = CancellationToken::new();
    let (tx, rx) = oneshot::channel();
    let r = Refresher {
        role: role.clone(),
        fetcher: sts.clone(),
        gate: Arc::new(StsGate::new(10)),
        metrics: metrics.clone(),
        clock: clock.clone(),
        backoff: Backoff {
            base: Duration::from_secs(1),
            cap,
        },
    };
    tokio::spawn(r.run(cancel.clone(), tx));
    Harness {
        role,
        sts,
        clock,
        metrics,
        cancel,
        first: Some(rx),
        _dir: dir,
    }
}

fn served_remaining(h: &Harness) -> Option<Duration> {
    match h.role.answer(h.clock.now(), false) {
        Answer::Serve(body) => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let exp = v["Expiration"].as_str().unwrap();
            let t =
                time::OffsetDateTime::parse(exp, &time::format_description::well_known::Rfc3339)
                    .unwrap();
            let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp() as u64);
            Some(exp.duration_since(h.clock.now()).unwrap_or_default())
        }
        _ => None,
    }
}

async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn healthy_state_serves_at_least_30_minutes_for_sessions_of_an_hour_or_more() {
    // F09 (healthy half): sample every 30 s across several rotations.
    for (duration, hours) in [("1h", 4u64), ("2h", 6), ("12h", 30)] {
        let lifetime = humantime::parse_duration(duration).unwrap();
        let mut h = start(&["--duration", duration], lifetime, &[], 2 * MIN);
        h.first.take().unwrap().await.unwrap().unwrap();
        let steps = hours * 120;
        for _ in 0..steps {
            let left = served_remaining(&h).expect("always served in the healthy state");
            assert!(
                left >= 30 * MIN,
                "{duration}: served with only {left:?} left"
            );
            advance(Duration::from_secs(30)).await;
        }
        // One call per renewal: at most one per (lifetime - lead - jitter).
        let lead = credvend::timing::default_lead(lifetime);
        let per = lifetime - lead - credvend::timing::MAX_JITTER;
        let bound = (hours * 3600) / per.as_secs() + 2;
        assert!(
            h.sts.calls() as u64 <= bound,
            "{duration}: {} calls > {bound}",
            h.sts.calls()
        );
        assert!(h.sts.calls() >= 2, "{duration}: never renewed");
    }
}

#[tokio::test(start_paused = true)]
async fn outage_serves_until_the_floor_then_503_with_the_cause_then_recovers() {
    // F10.
    let mut h = start(&["--duration", "1h"], 60 * MIN, &[], 2 * MIN);
    h.first.take().unwrap().await.unwrap().unwrap();
    h.sts
        .set_default(Reply::Fail(ErrorClass::Transient, "ServiceUnavailable"));

    // Until one minute (the default floor) before expiry: still served.
    let mut last_left = Duration::MAX;
    for _ in 0..(58 * 2) {
        advance(Duration::from_secs(30)).await;
        let left = served_remaining(&h).expect("served above the floor during the outage");
        assert!(left >= MIN, "served {left:?} below the floor");
        last_left = left;
    }
    assert!(
        last_left < 3 * MIN,
        "the test should have reached the floor region"
    );
    advance(2 * MIN).await;
    match h.role.answer(h.clock.now(), false) {
        Answer::Unavailable(Some(e)) => assert_eq!(e.code, "ServiceUnavailable"),
        other => panic!("expected 503 with the last error, got {}", kind(&other)),
    }
    // Calmly: backoff grows to the cap, so an hour of outage is not a storm.
    let outage_calls = h.sts.calls() - 1;
    assert!(
        outage_calls < 50,
        "{outage_calls} STS calls in a 35-minute outage"
    );
    assert!(h.metrics.render().windows(5).any(|w| w == b"error"));

    // STS returns: serving resumes by itself within one backoff cap.
    h.sts.set_default(Reply::Ok);
    advance(2 * MIN + Duration::from_secs(1)).await;
    let left = served_remaining(&h).expect("serving resumes when STS returns");
    assert!(left > 50 * MIN);
}

fn kind(a: &Answer) -> &'static str {
    match a {
        Answer::Serve(_) => "Serve",
        Answer::Cold(_) => "Cold",
        Answer::Unavailable(_) => "Unavailable",
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_sts_never_blocks_serving_and_calls_never_overlap() {
    // F11 and single flight: the renewal takes 5 s; requests meanwhile get
    // the old credentials at once.
    let mut h = start(&["--duration", "1h"], 60 * MIN, &[], 2 * MIN);
    h.first.take().unwrap().await.unwrap().unwrap();
    h.sts
        .set_default(Reply::Slow(Duration::from_secs(5), Box::new(Reply::Ok)));
    let before = served_remaining(&h).unwrap();
    // Step to inside the first renewal.
    let mut waited = Duration::ZERO;
    while h.sts.calls() < 2 {
        advance(Duration::from_secs(1)).await;
        waited += Duration::from_secs(1);
        assert!(waited < 30 * MIN);
    }
    assert_eq!(
        h.sts.in_flight.load(Ordering::SeqCst),
        1,
        "renewal should be in flight"
    );
    let during = served_remaining(&h).expect("served while STS is slow");
    assert!(during <= before);
    advance(Duration::from_secs(6)).await;
    let after = served_remaining(&h).unwrap();
    assert!(after > during + 20 * MIN, "the renewal should have landed");
    assert_eq!(h.sts.max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn cold_requests_wait_a_bounded_time_then_get_a_retryable_answer() {
    // F11 cold start: the very first STS call takes 5 s.
    let h = start(
        &["--duration", "1h"],
        60 * MIN,
        &[Reply::Slow(Duration::from_secs(5), Box::new(Reply::Ok))],
        2 * MIN,
    );
    let t0 = tokio::time::Instant::now();
    let c = h.clock.clone();
    let a = h
        .role
        .answer_waiting(|| c.now(), false, Duration::from_millis(400))
        .await;
    assert!(matches!(a, Answer::Cold(None)), "got {}", kind(&a));
    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(400),
        "wait must be bounded by --cold-wait"
    );

    // A request arriving 100 ms before the credentials gets them.
    advance(Duration::from_millis(4500)).await;
    let c = h.clock.clone();
    let a = h
        .role
        .answer_waiting(|| c.now(), false, Duration::from_millis(400))
        .await;
    assert!(matches!(a, Answer::Serve(_)), "got {}", kind(&a));
}

#[tokio::test(start_paused = true)]
async fn throttling_backs_off_exponentially_with_jitter_and_is_counted_apart() {
    // F16's backoff half.
    let throttle = Reply::Fail(ErrorClass::Throttled, "Throttling");
    let mut h = start(&["--duration", "1h"], 60 * MIN, &vec![throttle; 6], 2 * MIN);
    let first = h.first.take().unwrap().await.unwrap();
    assert_eq!(first.unwrap_err().code, "Throttling");
    while h.sts.calls() < 7 {
        advance(Duration::from_millis(100)).await;
    }
    let times = h.sts.call_times();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, g) in gaps.iter().take(6).enumerate() {
        // Equal jitter: between half and all of base * 2^i.
        let full = Duration::from_secs(1 << i);
        assert!(
            *g >= full / 2 && *g <= full + Duration::from_millis(200),
            "gap {i}: {g:?}"
        );
    }
    let text = String::from_utf8(h.metrics.render()).unwrap();
    assert!(
        text.contains("credvend_refresh_total{outcome=\"throttled\",role=\"default\"} 6"),
        "{text}"
    );
    assert!(text.contains("credvend_refresh_total{outcome=\"error\",role=\"default\"} 0"));
}

#[tokio::test(start_paused = true)]
async fn errors_that_need_an_operator_retry_at_the_cap_and_heal_without_restart() {
    let deny = Reply::Fail(ErrorClass::NeedsOperator, "AccessDenied");
    let mut h = start(&["--duration", "1h"], 60 * MIN, &vec![deny; 3], 2 * MIN);
    assert_eq!(
        h.first.take().unwrap().await.unwrap().unwrap_err().code,
        "AccessDenied"
    );
    advance(10 * MIN).await;
    let times = h.sts.call_times();
    assert!(
        times.len() >= 4,
        "a fixed trust policy must heal: {} calls",
        times.len()
    );
    for w in times.windows(2).take(3) {
        assert!(
            w[1] - w[0] >= MIN,
            "operator errors retry at the cap (2m, jittered down to 1m)"
        );
    }
    assert!(
        served_remaining(&h).is_some(),
        "healed after the trust policy was fixed"
    );
}
