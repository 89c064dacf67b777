//! Issue 2, item 6, and start-up field cases: bad settings exit non-zero
//! before serving, fast, with a message that names the cause and the fix.

use std::time::{Duration, Instant};

use crate::common::fake_sts::{FakeSts, Step};
use crate::common::*;

#[test]
fn no_base_credentials_exits_fast_naming_what_was_tried() {
    // F23: no env keys, no profile files (empty HOME), IMDS refused on a
    // closed loopback port.
    let started = Instant::now();
    let mut d = DaemonBuilder::new("start-nocreds")
        .no_env("AWS_ACCESS_KEY_ID")
        .no_env("AWS_SECRET_ACCESS_KEY")
        .moto_role()
        .spawn();
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(69));
    let logs = d.log_text();
    for tried in [
        "AWS_ACCESS_KEY_ID",
        "~/.aws/credentials",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "instance metadata",
        "fix:",
    ] {
        assert!(
            logs.contains(tried),
            "message does not mention {tried}: {logs}"
        );
    }
    assert!(!logs.contains("ready"), "must not become ready");
}

#[test]
fn sts_refusing_the_role_exits_with_the_code_and_a_hint() {
    let sts = FakeSts::start();
    sts.set_default(Step::deny());
    let mut d = DaemonBuilder::new("start-denied")
        .args(&["--role-arn", ROLE_ARN, "--sts-endpoint", &sts.url()])
        .spawn();
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(69));
    let logs = d.log_text();
    assert!(
        logs.contains("AccessDenied") && logs.contains("trust policy"),
        "{logs}"
    );
    assert!(!logs.contains(BASE_SECRET));
}

#[test]
fn impossible_timing_is_refused_with_the_numbers() {
    // F15 and the STS duration range.
    let cases: [(&[&str], &str); 3] = [
        (&["--duration", "1h", "--refresh-lead", "1h"], "3600s"),
        (&["--duration", "10m"], "600s"),
        (
            &[
                "--duration",
                "1h",
                "--refresh-lead",
                "5m",
                "--min-remaining",
                "10m",
            ],
            "600s",
        ),
    ];
    for (args, number) in cases {
        let started = Instant::now();
        let mut d = DaemonBuilder::new("start-timing")
            .moto_role()
            .args(args)
            .spawn();
        let status = d.wait_exit(Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(status.code(), Some(64), "{args:?}");
        let logs = d.log_text();
        assert!(logs.contains(number), "{args:?}: {logs}");
    }
}

#[test]
fn unusable_token_file_exits_naming_the_path() {
    let b = DaemonBuilder::new("start-token");
    let bad = b.dir.join("token-dir");
    std::fs::create_dir_all(&bad).unwrap();
    let mut d = b
        .moto_role()
        .args(&["--token-file", bad.to_str().unwrap()])
        .spawn();
    let status = d.wait_exit(Duration::from_secs(10));
    assert_ne!(status.code(), Some(0));
    assert!(d.log_text().contains("token-dir"), "{}", d.log_text());
}

#[test]
fn no_region_and_no_endpoint_is_a_config_error() {
    // F20: credvend will not guess a region (the global endpoint is wrong
    // for opt-in regions).
    let mut d = DaemonBuilder::new("start-region")
        .no_env("AWS_REGION")
        .no_env("AWS_ENDPOINT_URL_STS")
        .args(&["--role-arn", ROLE_ARN])
        .spawn();
    let status = d.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(64));
    assert!(d.log_text().contains("--region"), "{}", d.log_text());
}

#[test]
fn missing_web_identity_token_file_names_the_file() {
    // F22 at start-up.
    let mut d = DaemonBuilder::new("start-wi")
        .moto_role()
        .args(&[
            "--web-identity-token-file",
            "/nonexistent/credvend/sa-token",
        ])
        .spawn();
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(69));
    assert!(
        d.log_text().contains("/nonexistent/credvend/sa-token"),
        "{}",
        d.log_text()
    );
}

#[test]
fn bad_flag_values_exit_64() {
    let out = credvend_once(&["serve", "--duration", "forever"], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"));
}
