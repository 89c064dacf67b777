//! Issue 5, items 3 to 5 (and F07, F12, F14): readiness, signals, reload and
//! systemd notifications on the real binary.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::fake_sts::{FakeSts, Step};
use crate::common::*;

#[test]
fn readyz_follows_credentials_through_outage_recovery_and_shutdown() {
    let sts = FakeSts::start();
    sts.push([Step::Slow(
        Duration::from_millis(1500),
        Box::new(Step::OkFor(Duration::from_secs(6))),
    )]);
    let mut d = DaemonBuilder::new("readyz")
        .args(&["--role-arn", ROLE_ARN, "--sts-endpoint", &sts.url()])
        .args(&[
            "--min-remaining",
            "2s",
            "--backoff-base",
            "100ms",
            "--backoff-cap",
            "500ms",
            "--shutdown-delay",
            "3s",
        ])
        .spawn();
    let admin = d.admin();

    // Before the first credentials.
    let r = http(admin, "GET", "/readyz", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["roles"][0]["reason"], "no credentials yet");
    assert_eq!(
        http(admin, "GET", "/healthz", &[]).status,
        200,
        "alive while not ready"
    );

    // After.
    wait_until("ready", Duration::from_secs(5), || {
        http(admin, "GET", "/readyz", &[]).status == 200
    });

    // STS fails; the 6 s credentials fall below the 2 s floor.
    sts.set_default(Step::deny());
    wait_until("not ready in the outage", Duration::from_secs(10), || {
        http(admin, "GET", "/readyz", &[]).status == 503
    });
    let v = http(admin, "GET", "/readyz", &[]).json();
    assert_eq!(
        v["roles"][0]["reason"],
        "last STS call failed: AccessDenied"
    );

    // STS recovers.
    sts.set_default(Step::Ok);
    wait_until("ready again", Duration::from_secs(5), || {
        http(admin, "GET", "/readyz", &[]).status == 200
    });

    // SIGTERM: not ready at once, credentials still served.
    d.signal("TERM");
    wait_until("not ready after SIGTERM", Duration::from_secs(2), || {
        http(admin, "GET", "/readyz", &[]).status == 503
    });
    assert_eq!(
        http(admin, "GET", "/readyz", &[]).json()["code"],
        "ShuttingDown"
    );
    assert_eq!(
        d.creds().status,
        200,
        "still serving during the shutdown delay"
    );
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn sigterm_during_a_request_stream_fails_no_request_and_exits_zero() {
    // F14: every request that starts within the shutdown delay succeeds.
    let delay = Duration::from_secs(2);
    let mut d = DaemonBuilder::new("sigterm")
        .moto_role()
        .args(&["--shutdown-delay", "2s"])
        .start();
    let addr = d.listen();
    let token = d.token();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, token) = (stop.clone(), token.clone());
            std::thread::spawn(move || {
                let mut log = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = try_http(addr, "/v1/credentials", &[("Authorization", &token)]);
                    log.push((t, r.map(|r| r.status)));
                    std::thread::sleep(Duration::from_millis(5));
                }
                log
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(15));
    let exited = sent.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(status.code(), Some(0));
    assert!(
        exited >= delay,
        "exited after {exited:?}, before the shutdown delay"
    );
    let mut within = 0;
    for w in workers {
        for (t, status) in w.join().unwrap() {
            if t < sent + delay - Duration::from_millis(100) {
                assert_eq!(
                    status,
                    Some(200),
                    "a request within the shutdown delay failed"
                );
                within += 1;
            }
        }
    }
    assert!(within > 20, "only {within} requests were made");
    d.wait_log("shutting down", Duration::from_secs(1));
}

fn role_toml(name: &str, dir: &TempDir) -> String {
    format!(
        "[roles.{name}]\nrole_arn = \"arn:aws:iam::123456789012:role/{name}\"\n\
         sts_endpoint = \"{}\"\ntoken_file = \"{}\"\n\n",
        moto().url(),
        dir.join(&format!("{name}.token")).display()
    )
}

#[test]
fn sighup_adds_and_removes_roles_picks_up_tokens_and_rejects_a_broken_config() {
    let b = DaemonBuilder::new("sighup");
    let cfg = b.dir.join("credvend.toml");
    std::fs::write(&cfg, role_toml("a", &b.dir)).unwrap();
    let url = moto().url();
    let d = b
        .args(&[
            "--config",
            cfg.to_str().unwrap(),
            "--sts-endpoint",
            &url,
            "--role-arn",
            ROLE_ARN,
        ])
        .args(&["--token-grace", "2s"])
        .start();
    let addr = d.listen();
    let tok = |n: &str| std::fs::read_to_string(d.dir.join(&format!("{n}.token"))).unwrap();
    let get = |path: &str, t: &str| http(addr, "GET", path, &[("Authorization", t)]).status;
    // The flag role and role `a` need the emulator endpoint too.
    assert_eq!(get("/v1/credentials", &d.token()), 200);

    // Add role b.
    let both = format!("{}{}", role_toml("a", &d.dir), role_toml("b", &d.dir));
    std::fs::write(&cfg, both).unwrap();
    d.signal("HUP");
    wait_until("role b served", Duration::from_secs(10), || {
        d.dir.join("b.token").exists() && get("/v1/credentials/b", &tok("b")) == 200
    });

    // Remove role a.
    std::fs::write(&cfg, role_toml("b", &d.dir)).unwrap();
    let a_token = tok("a");
    d.signal("HUP");
    wait_until("role a gone", Duration::from_secs(10), || {
        get("/v1/credentials/a", &a_token) == 404
    });
    assert_eq!(get("/v1/credentials/b", &tok("b")), 200);

    // A new token for b: the new one works at once, the old one for the grace period.
    let old = tok("b");
    std::fs::write(d.dir.join("b.token.tmp"), "brand-new-token-for-role-b-0001").unwrap();
    std::fs::rename(d.dir.join("b.token.tmp"), d.dir.join("b.token")).unwrap();
    d.signal("HUP");
    wait_until("new token accepted", Duration::from_secs(3), || {
        get("/v1/credentials/b", "brand-new-token-for-role-b-0001") == 200
    });
    assert_eq!(
        get("/v1/credentials/b", &old),
        200,
        "previous token inside its grace period"
    );
    assert!(
        d.metric("credvend_token_previous_accepted_total{role=\"b\"}")
            .unwrap()
            >= 1.0
    );
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        get("/v1/credentials/b", &old),
        401,
        "previous token after its grace period"
    );

    // A broken config is refused; the old one keeps serving.
    std::fs::write(&cfg, "[roles.b]\nduration = \"forever\"\n").unwrap();
    d.signal("HUP");
    d.wait_log("reload rejected", Duration::from_secs(5));
    assert_eq!(
        get("/v1/credentials/b", "brand-new-token-for-role-b-0001"),
        200
    );
    assert_eq!(
        d.metric("credvend_config_reloads_total{outcome=\"error\"}"),
        Some(1.0)
    );
    assert!(
        d.metric("credvend_config_reloads_total{outcome=\"success\"}")
            .unwrap()
            >= 3.0
    );
}

#[test]
fn sd_notify_ready_only_after_credentials_then_reloading_and_stopping() {
    // F12, with a real NOTIFY_SOCKET datagram socket made here.
    let sts = FakeSts::start();
    sts.push([Step::Slow(Duration::from_millis(1500), Box::new(Step::Ok))]);
    let b = DaemonBuilder::new("notify");
    let sock_path = b.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut d = b
        .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .args(&[
            "--role-arn",
            ROLE_ARN,
            "--sts-endpoint",
            &sts.url(),
            "--shutdown-delay",
            "0s",
        ])
        .spawn();
    let mut buf = [0u8; 512];
    let recv = |buf: &mut [u8]| {
        let n = sock.recv(buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Watchdog pings start with the runtime, READY=1 only with credentials.
    let mut first = recv(&mut buf);
    while first.trim() == "WATCHDOG=1" {
        first = recv(&mut buf);
    }
    assert!(first.contains("READY=1"), "{first}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "READY=1 before credentials existed"
    );
    assert_eq!(
        d.creds().status,
        200,
        "credentials exist when READY=1 arrives"
    );

    let recv = |buf: &mut [u8]| loop {
        let m = recv(buf);
        if m.trim() != "WATCHDOG=1" {
            return m;
        }
    };
    let ping = Instant::now();
    let mut pings = 0;
    while ping.elapsed() < Duration::from_millis(700) {
        let n = sock.recv(&mut buf).unwrap();
        pings += (String::from_utf8_lossy(&buf[..n]).trim() == "WATCHDOG=1") as u32;
    }
    assert!(pings >= 2, "watchdog pings every WATCHDOG_USEC/2");
    d.signal("HUP");
    let reloading = recv(&mut buf);
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(recv(&mut buf).contains("READY=1"));

    d.signal("TERM");
    assert!(recv(&mut buf).contains("STOPPING=1"));
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn sighup_changing_a_role_leaves_no_serving_gap() {
    let b = DaemonBuilder::new("sighup-gap");
    let cfg = b.dir.join("credvend.toml");
    std::fs::write(&cfg, role_toml("a", &b.dir)).unwrap();
    let d = b.args(&["--config", cfg.to_str().unwrap()]).start();
    let addr = d.listen();
    let token = std::fs::read_to_string(d.dir.join("a.token")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, token) = (stop.clone(), token.clone());
        std::thread::spawn(move || {
            let mut conn = Conn::open(addr).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = conn
                    .get("/v1/credentials/a", &[("Authorization", &token)])
                    .unwrap();
                assert_eq!(r.status, 200, "gap during reload: {}", r.text());
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let changed = role_toml("a", &d.dir).replace("token_file", "duration = \"2h\"\ntoken_file");
    std::fs::write(&cfg, changed).unwrap();
    d.signal("HUP");
    wait_until("the 2h session served", Duration::from_secs(10), || {
        let v = http(
            addr,
            "GET",
            "/v1/credentials/a",
            &[("Authorization", &token)],
        )
        .json();
        remaining(v["Expiration"].as_str().unwrap()) > 3700.0
    });
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    assert!(poller.join().unwrap() > 50);
    d.wait_log("reloaded", Duration::from_secs(1));
}
