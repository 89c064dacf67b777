//! Issue 3 on the real binary: field cases F02, F09, F11, F13, F16, F17,
//! F21, and a real rotation watched by a polling client.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::common::fake_sts::{FakeSts, Step};
use crate::common::*;

fn on(sts: &FakeSts, tag: &str) -> DaemonBuilder {
    DaemonBuilder::new(tag).args(&["--role-arn", ROLE_ARN, "--sts-endpoint", &sts.url()])
}

#[test]
fn two_hundred_cold_requests_while_sts_throttles_make_one_call_at_a_time() {
    // F16: single flight, jittered backoff, throttles counted apart.
    let sts = FakeSts::start();
    sts.push([
        Step::Slow(Duration::from_millis(300), Box::new(Step::throttle())),
        Step::throttle(),
    ]);
    let d = on(&sts, "f16")
        .args(&["--backoff-base", "200ms", "--cold-wait", "400ms"])
        .spawn();
    let addr = d.listen();
    let token = d.token();
    let barrier = Arc::new(Barrier::new(200));
    let workers: Vec<_> = (0..200)
        .map(|_| {
            let (b, t) = (barrier.clone(), token.clone());
            std::thread::spawn(move || {
                b.wait();
                http(addr, "GET", "/v1/credentials", &[("Authorization", &t)])
            })
        })
        .collect();
    let mut served = 0;
    for w in workers {
        let r = w.join().unwrap();
        match r.status {
            200 => served += 1,
            503 => {
                assert_eq!(r.header("retry-after"), Some("1"), "503 must be retryable");
                assert!(r.json()["code"].is_string());
            }
            s => panic!("status {s}: {}", r.text()),
        }
    }
    d.wait_log("ready: every role", Duration::from_secs(10));
    assert_eq!(sts.calls(), 3, "two throttled attempts and one success");
    assert_eq!(
        sts.max_in_flight(),
        1,
        "never more than one STS call in flight"
    );
    assert_eq!(
        d.metric("credvend_refresh_total{outcome=\"throttled\",role=\"default\"}"),
        Some(2.0)
    );
    assert_eq!(d.creds().status, 200);
    eprintln!("{served} of 200 cold requests were served, the rest got a retryable 503");
}

#[test]
fn role_chaining_clamps_to_an_hour_with_a_warning_or_refuses_in_strict_mode() {
    // F21: temporary source credentials.
    let sts = FakeSts::start();
    let d = on(&sts, "f21")
        .env("AWS_SESSION_TOKEN", "base-session-token-credvend-test")
        .args(&["--duration", "12h"])
        .start();
    assert_eq!(sts.requests()[0]["DurationSeconds"], "3600");
    let warn = d.wait_log("role chaining", Duration::from_secs(1));
    assert_eq!(warn["level"], "WARN");
    let served = d.creds().json();
    assert_ne!(
        served["Token"], "base-session-token-credvend-test",
        "never the source credentials"
    );
    drop(d);

    let mut strict = on(&sts, "f21s")
        .env("AWS_SESSION_TOKEN", "base-session-token-credvend-test")
        .args(&["--duration", "12h", "--strict"])
        .spawn();
    assert_eq!(strict.wait_exit(Duration::from_secs(10)).code(), Some(64));
    assert!(strict.log_text().contains("3600s"));
}

#[test]
fn a_fifteen_minute_session_is_explained_at_start_up() {
    // F09: the start-up half.
    let d = DaemonBuilder::new("f09")
        .moto_role()
        .args(&["--duration", "15m"])
        .start();
    let w = d.wait_log("15-minute session", Duration::from_secs(1));
    assert_eq!(w["level"], "WARN");
    let m = w["message"].as_str().unwrap();
    assert!(m.contains("botocore") && m.contains("--duration 1h"), "{m}");
    let v = d.creds().json();
    assert!(remaining(v["Expiration"].as_str().unwrap()) > 14.0 * 60.0);
}

#[test]
fn upstream_errors_are_503_json_naming_the_code_and_the_role() {
    // F02 and F10 on the wire: short credentials, then STS denies.
    let sts = FakeSts::start();
    sts.push([Step::OkFor(Duration::from_secs(4))]);
    sts.set_default(Step::deny());
    let d = on(&sts, "f02")
        .args(&["--min-remaining", "1s", "--backoff-cap", "1s"])
        .start();
    assert_eq!(d.creds().status, 200);
    let token = d.token();
    let start = Instant::now();
    let r = loop {
        let r = http(
            d.listen(),
            "GET",
            "/v1/credentials",
            &[("Authorization", &token)],
        );
        if r.status != 200 {
            break r;
        }
        // Never an expired credential, even just before the floor.
        assert!(remaining(r.json()["Expiration"].as_str().unwrap()) > 0.0);
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["code"], "AccessDenied");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("role default") && msg.contains("AccessDenied"),
        "{msg}"
    );
    assert!(r.header("retry-after").is_some());
    let e = d.wait_log("no valid credentials are left", Duration::from_secs(5));
    assert_eq!(e["level"], "ERROR");
    assert_eq!(
        d.wait_log("still serving the previous", Duration::from_secs(1))["level"],
        "WARN"
    );
}

#[test]
fn requests_are_answered_from_memory_while_sts_is_slow() {
    // F11: renewal takes 3 s; requests meanwhile take milliseconds.
    let sts = FakeSts::start();
    sts.push([Step::OkFor(Duration::from_secs(30))]);
    sts.set_default(Step::Slow(Duration::from_secs(3), Box::new(Step::Ok)));
    let d = on(&sts, "f11")
        .args(&[
            "--testing-short-sessions",
            "--duration",
            "30s",
            "--refresh-lead",
            "29s",
        ])
        .start();
    let token = d.token();
    // The renewal starts at once (lead 29s of 30s is capped to 3/4 of the
    // lifetime, so within ~8 s); watch requests while it is in flight.
    wait_until("the slow renewal to start", Duration::from_secs(15), || {
        sts.calls() >= 2
    });
    let mut conn = Conn::open(d.listen()).unwrap();
    let mut worst = Duration::ZERO;
    for _ in 0..100 {
        let t = Instant::now();
        let r = conn
            .get("/v1/credentials", &[("Authorization", &token)])
            .unwrap();
        worst = worst.max(t.elapsed());
        assert_eq!(r.status, 200);
    }
    assert!(
        worst < Duration::from_millis(50),
        "a request took {worst:?} during a slow renewal"
    );
}

#[test]
fn a_polling_client_sees_only_valid_credentials_across_real_rotations() {
    // Issue 3, item 4: short sessions against the fake STS.
    let sts = FakeSts::start();
    let d = on(&sts, "rotate")
        .args(&[
            "--testing-short-sessions",
            "--duration",
            "12s",
            "--refresh-lead",
            "8s",
        ])
        .start();
    let token = d.token();
    let mut conn = Conn::open(d.listen()).unwrap();
    let mut keys = HashSet::new();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(14) {
        let r = conn
            .get("/v1/credentials", &[("Authorization", &token)])
            .unwrap();
        assert_eq!(r.status, 200, "error during rotation: {}", r.text());
        let v = r.json();
        // Renewal starts with 8 s (plus jitter) left; whole-second
        // truncation and scheduling cost at most ~2 s more.
        let left = remaining(v["Expiration"].as_str().unwrap());
        assert!(left >= 6.0, "served with only {left:.1}s left");
        keys.insert(v["AccessKeyId"].as_str().unwrap().to_string());
        n += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        keys.len() >= 3,
        "expected at least two rotations, saw {} credentials",
        keys.len()
    );
    assert_eq!(sts.calls(), keys.len(), "one STS call per renewal");
    eprintln!("{n} polls, {} credentials", keys.len());
}

#[test]
fn a_killed_credvend_fails_closed_and_serves_again_after_restart() {
    // F13: SIGKILL under load, then restart with the same token file.
    let b = DaemonBuilder::new("f13");
    let token_file = b.dir.join("persist-token");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--listen",
        &listen,
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    let mut d = b.moto_role().args(&args).start();
    let token = std::fs::read_to_string(&token_file).unwrap();
    let addr = d.listen();
    assert_eq!(
        http(addr, "GET", "/v1/credentials", &[("Authorization", &token)]).status,
        200
    );
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(5));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "must fail closed: nothing listens"
    );

    let started = Instant::now();
    let d2 = DaemonBuilder::new("f13b").moto_role().args(&args).start();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        token,
        "token file reused"
    );
    assert_eq!(
        http(
            d2.listen(),
            "GET",
            "/v1/credentials",
            &[("Authorization", &token)]
        )
        .status,
        200
    );
}

#[test]
fn a_client_looping_thousands_of_times_is_served_from_cache() {
    // F17: 20 000 requests on one keep-alive connection, no error, one STS call.
    let sts = FakeSts::start();
    let d = on(&sts, "f17").start();
    let token = d.token();
    let mut conn = Conn::open(d.listen()).unwrap();
    let t = Instant::now();
    for _ in 0..20_000 {
        let r = conn
            .get("/v1/credentials", &[("Authorization", &token)])
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let rate = 20_000.0 / t.elapsed().as_secs_f64();
    assert_eq!(sts.calls(), 1);
    eprintln!("one client: {rate:.0} requests/s");
}
