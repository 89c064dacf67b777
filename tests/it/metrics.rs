//! Issue 5, items 1 and 2: the metrics a scrape sees during renewals and
//! failures, promtool's lint, and no series from request input.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::common::fake_sts::{FakeSts, Step};
use crate::common::*;

fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by scripts/setup-test-env");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_scrape_shows_renewals_failures_expiry_and_requests() {
    let sts = FakeSts::start();
    sts.push([
        Step::Ok,
        Step::Ok,
        Step::Fail(500, "InternalFailure"),
        Step::throttle(),
    ]);
    let d = DaemonBuilder::new("metrics")
        .args(&["--role-arn", ROLE_ARN, "--sts-endpoint", &sts.url()])
        .args(&[
            "--testing-short-sessions",
            "--duration",
            "12s",
            "--refresh-lead",
            "8s",
        ])
        .args(&["--backoff-base", "300ms"])
        .start();
    let mut ok = 0;
    for _ in 0..25 {
        assert_eq!(d.creds().status, 200);
        ok += 1;
    }
    let bad = http(d.listen(), "GET", "/v1/credentials", &[]);
    assert_eq!(bad.status, 401);
    wait_until(
        "a renewal, a failure and a throttle",
        Duration::from_secs(15),
        || sts.calls() >= 5,
    );
    std::thread::sleep(Duration::from_millis(200));

    let text = d.admin_get("/metrics").text();
    let m = |s: &str| {
        d.metric(s)
            .unwrap_or_else(|| panic!("no series {s} in\n{text}"))
    };
    assert!(m("credvend_refresh_total{outcome=\"success\",role=\"default\"}") >= 3.0);
    assert_eq!(
        m("credvend_refresh_total{outcome=\"error\",role=\"default\"}"),
        1.0
    );
    assert_eq!(
        m("credvend_refresh_total{outcome=\"throttled\",role=\"default\"}"),
        1.0
    );
    assert_eq!(
        m("credvend_refresh_errors_total{class=\"transient\",role=\"default\"}"),
        1.0
    );
    assert!(m("credvend_refresh_duration_seconds_count{role=\"default\"}") >= 5.0);
    assert_eq!(
        m("credvend_requests_total{code=\"200\",endpoint=\"container\"}"),
        ok as f64
    );
    assert_eq!(
        m("credvend_requests_total{code=\"401\",endpoint=\"container\"}"),
        1.0
    );
    assert_eq!(
        m("credvend_request_duration_seconds_count{endpoint=\"container\"}"),
        ok as f64 + 1.0
    );
    assert!(text.contains(
        "credvend_request_duration_seconds_bucket{endpoint=\"container\",le=\"0.00001\"}"
    ));
    assert_eq!(m("credvend_ready"), 1.0);
    assert_eq!(m("credvend_roles"), 1.0);
    assert_eq!(
        m(&format!(
            "credvend_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );

    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expiry = m("credvend_credentials_expiry_timestamp_seconds{role=\"default\"}");
    let served = remaining(d.creds().json()["Expiration"].as_str().unwrap());
    assert!(
        (expiry - now - served).abs() < 2.0,
        "expiry gauge {expiry} vs served {served}"
    );
    let last = m("credvend_credentials_last_refresh_timestamp_seconds{role=\"default\"}");
    assert!(now - last < 15.0 && last <= now + 1.0);

    promtool_check(&text);
}

#[test]
fn random_paths_and_tokens_add_no_series() {
    let d = DaemonBuilder::new("metrics-cardinality")
        .moto_role()
        .args(&["--imds-listen", "127.0.0.1:0"])
        .start();
    let before = series(&d.admin_get("/metrics").text());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        format!("{x:016x}")
    };
    for (i, addr) in [d.listen(), d.imds(), d.admin()].into_iter().enumerate() {
        let mut conn = Conn::open(addr).unwrap();
        for _ in 0..(if i == 0 { 5000 } else { 2500 }) {
            let path = format!("/v1/credentials/{}?q={}", next(), next());
            let token = next();
            let r = conn.get(
                &path,
                &[
                    ("Authorization", &token),
                    ("X-aws-ec2-metadata-token", &token),
                ],
            );
            assert!(r.is_ok());
        }
    }
    let after = series(&d.admin_get("/metrics").text());
    let new: Vec<_> = after.difference(&before).collect();
    // Only fixed series may change value; none may appear.
    assert!(
        new.is_empty(),
        "10 000 random requests created series: {new:?}"
    );
}
