//! Faults found by trying to break credvend, each pinned by a test: secrets
//! in config errors and STS messages, duplicate roles, credentials that are
//! dead on arrival, reloads during outages, signals during start-up, token
//! files that cannot be used, and request edge cases.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::fake_sts::{FakeSts, Step};
use crate::common::*;

fn on(sts: &FakeSts, tag: &str) -> DaemonBuilder {
    DaemonBuilder::new(tag).args(&["--role-arn", ROLE_ARN, "--sts-endpoint", &sts.url()])
}

fn serve_config(text: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("review-cfg");
    let path = dir.join("c.toml");
    std::fs::write(&path, text.replace("DIR", dir.path().to_str().unwrap())).unwrap();
    let out = credvend_once(
        &[
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--role-arn",
            ROLE_ARN,
            "--token-file",
            dir.join("flag.token").to_str().unwrap(),
        ],
        &[("AWS_REGION", "us-east-1")],
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_never_quote_an_external_id() {
    for bad in [
        "external_id = \"EXTIDsecret123",
        "external_id = 1234567890123",
    ] {
        let (code, err) = serve_config(&format!("[roles.a]\ntoken_file = \"DIR/a\"\n{bad}\n"));
        assert_eq!(code, Some(64));
        assert!(
            err.contains("line 3") && err.contains("external_id"),
            "{err}"
        );
        assert!(
            !err.contains("EXTIDsecret123") && !err.contains("1234567890123"),
            "{err}"
        );
    }
    let (code, err) =
        serve_config("[roles.a]\ntoken_file = \"DIR/a\"\nexternal_id = \"has space\"\n");
    assert_eq!(code, Some(64));
    assert!(
        !err.contains("has space") && err.contains("external_id"),
        "{err}"
    );
}

#[test]
fn sts_messages_that_quote_the_external_id_are_scrubbed() {
    let sts = FakeSts::start();
    sts.set_default(Step::FailWith(
        400,
        "ValidationError",
        "1 validation error detected: Value 'ext-secret-0042' at 'externalId' failed",
    ));
    let mut d = on(&sts, "review-extid")
        .args(&["--external-id", "ext-secret-0042"])
        .spawn();
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(69));
    let out = d.log_text();
    assert!(
        out.contains("ValidationError") && out.contains("<external-id>"),
        "{out}"
    );
    assert!(!out.contains("ext-secret-0042"), "{out}");
}

#[test]
fn duplicate_role_names_and_token_files_however_spelled_are_refused() {
    let (code, err) = serve_config("[roles.default]\ntoken_file = \"DIR/other\"\n");
    assert_eq!(code, Some(64));
    assert!(err.contains("`default` is used twice"), "{err}");
    let dir = TempDir::new("review-same");
    let name = dir
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[roles.a]\ntoken_file = \"{0}/a.tok\"\n[roles.b]\ntoken_file = \"{0}/../{1}/a.tok\"\n",
            dir.path().display(),
            name
        ),
    )
    .unwrap();
    let out = credvend_once(
        &["serve", "--config", path.to_str().unwrap()],
        &[("AWS_REGION", "us-east-1")],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("share the token file"));
}

#[test]
fn credentials_dead_on_arrival_never_replace_good_ones_nor_storm_sts() {
    // F01: a "success" whose Expiration is already past.
    let sts = FakeSts::start();
    sts.push([Step::OkFor(Duration::from_secs(20))]);
    sts.set_default(Step::Expired);
    let d = on(&sts, "review-doa")
        .args(&["--min-remaining", "2s", "--backoff-cap", "2s"])
        .start();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        let r = d.creds();
        assert_eq!(r.status, 200, "good credentials were dropped: {}", r.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let calls = sts.calls();
    assert!((2..=6).contains(&calls), "{calls} STS calls in 8 s");
    let e = d.wait_log("renewal failed", Duration::from_secs(1));
    assert_eq!(e["code"], "ExpiredOnArrival");
}

#[test]
fn a_reload_during_an_outage_keeps_serving_a_changed_role() {
    let sts = FakeSts::start();
    let b = DaemonBuilder::new("review-reload");
    let cfg = b.dir.join("c.toml");
    let token_file = b.dir.join("a.token");
    let role = |extra: &str| {
        format!(
            "[roles.a]\nrole_arn = \"{ROLE_ARN}\"\nsts_endpoint = \"{}\"\ntoken_file = \"{}\"\n{extra}",
            sts.url(),
            token_file.display()
        )
    };
    std::fs::write(&cfg, role("")).unwrap();
    let d = b
        .args(&["--config", cfg.to_str().unwrap(), "--sts-timeout", "2s"])
        .start();
    let token = std::fs::read_to_string(d.dir.join("a.token")).unwrap();
    sts.set_default(Step::Fail(500, "InternalFailure"));
    std::fs::write(&cfg, role("session_name = \"changed-name\"\n")).unwrap();
    d.signal("HUP");
    d.wait_log(
        "still serving it with the previous settings",
        Duration::from_secs(10),
    );
    let r = http(
        d.listen(),
        "GET",
        "/v1/credentials/a",
        &[("Authorization", &token)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn signals_during_start_up_are_handled_not_fatal() {
    let sts = FakeSts::start();
    sts.push([Step::Slow(Duration::from_millis(1500), Box::new(Step::Ok))]);
    let mut d = on(&sts, "review-early")
        .args(&["--shutdown-delay", "0s"])
        .spawn();
    std::thread::sleep(Duration::from_millis(300));
    d.signal("HUP");
    d.wait_log("ready: every role", Duration::from_secs(10));
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "SIGHUP during start-up killed credvend"
    );
    assert_eq!(d.creds().status, 200);
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn an_unusable_token_file_is_logged_once_not_per_request() {
    let d = DaemonBuilder::new("review-badtoken").moto_role().start();
    let good = d.token();
    std::fs::write(d.dir.join("t.tmp"), "short").unwrap();
    std::fs::rename(d.dir.join("t.tmp"), d.token_file()).unwrap();
    for _ in 0..100 {
        http(
            d.listen(),
            "GET",
            "/v1/credentials",
            &[("Authorization", "wrong-token-wrong-token")],
        );
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        d.count_log("auth token file unusable") <= 2,
        "{}",
        d.count_log("auth token file unusable")
    );
    assert_eq!(
        http(
            d.listen(),
            "GET",
            "/v1/credentials",
            &[("Authorization", &good)]
        )
        .status,
        200
    );
}

#[test]
fn request_edge_cases() {
    let d = DaemonBuilder::new("review-edges").moto_role().start();
    let token = d.token();
    let auth = format!("Authorization: {token}\r\n");
    // Content-Length: 00 is no body.
    let r = raw(
        d.listen(),
        format!("GET /v1/credentials HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 00\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200);
    // Two Authorization headers are ambiguous, whichever comes first.
    for order in [
        format!("{auth}Authorization: bad\r\n"),
        format!("Authorization: bad\r\n{auth}"),
    ] {
        let r = raw(
            d.listen(),
            format!("GET /v1/credentials HTTP/1.1\r\nHost: x\r\n{order}Connection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["code"], "AmbiguousAuthorization");
    }
    // "Bearer" with extra spaces still gets the Bearer hint.
    let r = http(
        d.listen(),
        "GET",
        "/v1/credentials",
        &[("Authorization", &format!("Bearer   {token}"))],
    );
    assert_eq!(r.status, 401);
    assert!(r.json()["message"].as_str().unwrap().contains("Bearer"));
    // HTTP/1.0 and absolute-form targets are served.
    let r = raw(
        d.listen(),
        format!("GET /v1/credentials HTTP/1.0\r\n{auth}\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200);
    let r = raw(
        d.listen(),
        format!(
            "GET http://{}/v1/credentials HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n",
            d.listen()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
    // The advertised URL in the log has the port really bound.
    let line = d.wait_log("role configured", Duration::from_secs(1));
    assert_eq!(
        line["url"],
        format!("http://127.0.0.1:{}/v1/credentials", d.listen().port())
    );
}

#[test]
fn settings_that_cannot_work_are_refused() {
    let cases: [(&[&str], &str); 6] = [
        (&["--max-connections", "0"], "--max-connections"),
        (&["--sts-timeout", "0s"], "--sts-timeout"),
        (&["--backoff-base", "0s"], "--backoff-base"),
        (
            &["--backoff-base", "10s", "--backoff-cap", "1s"],
            "--backoff-cap",
        ),
        (&["--cold-wait", "1h"], "--cold-wait"),
        (&["--header-timeout", "0s"], "--header-timeout"),
    ];
    for (args, names) in cases {
        let out = Command::new(bin())
            .args(["serve", "--role-arn", ROLE_ARN])
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(names),
            "{args:?}"
        );
    }
    let (code, err) = serve_config("[roles.\"..\"]\ntoken_file = \"DIR/a\"\n");
    assert_eq!(code, Some(64));
    assert!(err.contains("role names"), "{err}");
}

#[test]
fn config_roles_take_the_region_and_endpoint_flags_as_defaults() {
    // A role pointed at an emulator by flag must not go to the real STS
    // because the file does not repeat the endpoint.
    let sts = FakeSts::start();
    let b = DaemonBuilder::new("review-defaults");
    let cfg = b.dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[roles.a]\nrole_arn = \"{ROLE_ARN}\"\ntoken_file = \"{}\"\n",
            b.dir.join("a.token").display()
        ),
    )
    .unwrap();
    let d = b
        .no_env("AWS_REGION")
        .args(&[
            "--config",
            cfg.to_str().unwrap(),
            "--sts-endpoint",
            &sts.url(),
        ])
        .start();
    assert_eq!(sts.calls(), 1);
    let line = d.wait_log("role configured", Duration::from_secs(1));
    assert_eq!(line["sts_endpoint"], sts.url());

    // The same through AWS_ENDPOINT_URL_STS alone.
    let sts2 = FakeSts::start();
    let b = DaemonBuilder::new("review-envep");
    let d = b
        .env("AWS_ENDPOINT_URL_STS", &sts2.url())
        .args(&["--role-arn", ROLE_ARN])
        .start();
    assert_eq!(sts2.calls(), 1);
    let line = d.wait_log("role configured", Duration::from_secs(1));
    assert_eq!(line["sts_endpoint"], sts2.url());
}

#[test]
fn a_token_file_with_a_newline_gets_a_warning_naming_the_fix() {
    let b = DaemonBuilder::new("review-padded");
    std::fs::write(b.dir.join("token"), "operator-token-with-newline-0001\n").unwrap();
    let d = b.moto_role().start();
    let w = d.wait_log("ends with a newline", Duration::from_secs(1));
    assert_eq!(w["level"], "WARN");
    assert!(w["message"].as_str().unwrap().contains("printf"));
}

#[test]
fn a_key_id_without_its_secret_is_named() {
    let mut d = DaemonBuilder::new("review-halfkey")
        .no_env("AWS_SECRET_ACCESS_KEY")
        .moto_role()
        .spawn();
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(69));
    assert!(d
        .log_text()
        .contains("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"));
}
