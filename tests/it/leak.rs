//! Issue 4, item 5: a whole session at the most verbose log level, and not
//! one secret in anything credvend printed or exposed.

use std::time::Duration;

use crate::common::fake_sts::{FakeSts, Step};
use crate::common::*;

/// Everything at trace, and the SDK modules known to print credentials at
/// debug or trace named one by one: a specific directive must not get
/// around the cap on the SDK's crates.
const VERBOSE: &str = "trace,aws_smithy_runtime::client::orchestrator::endpoints=trace,\
    aws_smithy_runtime::client::orchestrator::auth=trace,aws_sigv4::http_request=trace,\
    aws_sigv4=trace,aws_config=trace,hyper_util=trace";

#[test]
fn a_full_session_at_trace_level_prints_no_secret() {
    let sts = FakeSts::start();
    sts.push([
        Step::Ok,
        Step::Ok,
        Step::deny(),
        Step::Fail(500, "InternalFailure"),
    ]);
    let mut d = DaemonBuilder::new("leak")
        .env("RUST_LOG", VERBOSE)
        .env("AWS_SESSION_TOKEN", "base-session-token-must-not-leak")
        .args(&[
            "--log-level",
            VERBOSE,
            "--role-arn",
            ROLE_ARN,
            "--sts-endpoint",
            &sts.url(),
        ])
        .args(&[
            "--testing-short-sessions",
            "--duration",
            "10s",
            "--refresh-lead",
            "6s",
        ])
        .args(&[
            "--imds-listen",
            "127.0.0.1:0",
            "--backoff-base",
            "200ms",
            "--backoff-cap",
            "1s",
            "--shutdown-delay",
            "0s",
        ])
        .args(&["--external-id", "external-id-must-not-leak"])
        .start();
    let token = d.token();
    let imds_token = http(
        d.imds(),
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
    )
    .text();

    // Serve, renew, fail a renewal, recover; with good and bad requests.
    let mut served = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(9) {
        served.push(d.creds().text());
        let h = [("X-aws-ec2-metadata-token", imds_token.as_str())];
        served.push(
            http(
                d.imds(),
                "GET",
                "/latest/meta-data/iam/security-credentials/demo",
                &h,
            )
            .text(),
        );
        http(
            d.listen(),
            "GET",
            "/v1/credentials",
            &[("Authorization", &format!("Bearer {token}"))],
        );
        http(
            d.listen(),
            "GET",
            "/v1/credentials",
            &[("Authorization", &format!("{token}x"))],
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        sts.calls() >= 4,
        "the session should include renewals and failures: {}",
        sts.calls()
    );
    d.wait_log("renewal failed", Duration::from_secs(1));
    // Rotate the auth token too.
    std::fs::write(d.dir.join("token.new"), "rotated-auth-token-must-not-leak").unwrap();
    std::fs::rename(d.dir.join("token.new"), d.token_file()).unwrap();
    d.wait_log("auth token file reloaded", Duration::from_secs(5));
    let metrics = d.admin_get("/metrics").text();
    let readyz = d.admin_get("/readyz").text();
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(15)).code(), Some(0));

    let output = format!("{}\n{metrics}\n{readyz}", d.log_text());
    assert!(
        output.contains("TRACE") || output.contains("DEBUG"),
        "verbose logging was on"
    );
    let mut secrets = sts.secrets();
    secrets.extend([
        BASE_KEY_ID.to_string(),
        BASE_SECRET.to_string(),
        "base-session-token-must-not-leak".into(),
        "external-id-must-not-leak".into(),
        token.clone(),
        imds_token.clone(),
        "rotated-auth-token-must-not-leak".into(),
    ]);
    assert!(secrets.len() > 12);
    for s in &secrets {
        assert!(
            !output.contains(s.as_str()),
            "secret leaked: {}...",
            &s[..8.min(s.len())]
        );
    }
    // Sanity: the served bodies did contain the vended secrets.
    assert!(served
        .iter()
        .any(|b| sts.secrets().iter().any(|s| b.contains(s.as_str()))));
}
