//! Issue 4, items 1 and 2: the IMDSv2 emulation, rule by rule from
//! sdk-contract section 2, and real clients that use it.

use std::time::Duration;

use crate::common::*;

const CREDS: &str = "/latest/meta-data/iam/security-credentials/";
const CREDS_EXT: &str = "/latest/meta-data/iam/security-credentials-extended/";
const TOKEN: &str = "/latest/api/token";
const TTL: &str = "X-aws-ec2-metadata-token-ttl-seconds";

fn with_imds(tag: &str, extra: &[&str]) -> Daemon {
    DaemonBuilder::new(tag)
        .moto_role()
        .args(&["--imds-listen", "127.0.0.1:0"])
        .args(extra)
        .start()
}

fn put_token(d: &Daemon, ttl: &str) -> Resp {
    http(d.imds(), "PUT", TOKEN, &[(TTL, ttl)])
}

fn session(d: &Daemon) -> String {
    let r = put_token(d, "21600");
    assert_eq!(r.status, 200);
    r.text()
}

#[test]
fn token_put_validates_and_echoes_the_ttl() {
    let d = with_imds("imds-ttl", &[]);
    for ttl in ["1", "21600", "300"] {
        let r = put_token(&d, ttl);
        assert_eq!(r.status, 200, "ttl {ttl}");
        assert_eq!(
            r.header(TTL),
            Some(ttl),
            "the TTL header must be echoed (Rust, Go need it)"
        );
        let body = r.text();
        assert!(!body.is_empty() && !body.contains('\n') && !body.contains('\r'));
    }
    for bad in ["0", "21601", "-1", "abc", "1.5", ""] {
        let r = put_token(&d, bad);
        assert_eq!(r.status, 400, "ttl {bad:?}");
        assert_eq!(r.json()["code"], "InvalidTTL");
    }
    let r = http(d.imds(), "PUT", TOKEN, &[]);
    assert_eq!(r.status, 400, "missing TTL");
    let r = http(d.imds(), "GET", TOKEN, &[(TTL, "60")]);
    assert_eq!(r.status, 405);
}

#[test]
fn a_token_put_through_a_proxy_is_forbidden() {
    // F19.
    let d = with_imds("imds-xff", &[]);
    let r = http(
        d.imds(),
        "PUT",
        TOKEN,
        &[(TTL, "21600"), ("X-Forwarded-For", "203.0.113.9")],
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "Forbidden");
}

#[test]
fn listing_and_credentials_on_both_path_families() {
    let d = with_imds("imds-paths", &[]);
    let tok = session(&d);
    let h = [("X-aws-ec2-metadata-token", tok.as_str())];
    for base in [CREDS, CREDS_EXT] {
        let list = http(d.imds(), "GET", base, &h);
        assert_eq!(list.status, 200);
        assert_eq!(list.body, b"demo", "exactly one role name, no newline");
        let r = http(d.imds(), "GET", &format!("{base}demo"), &h);
        assert_eq!(r.status, 200, "{base}");
        let v = r.json();
        assert_eq!(v["Code"], "Success");
        assert_eq!(v["Type"], "AWS-HMAC");
        for k in [
            "AccessKeyId",
            "SecretAccessKey",
            "Token",
            "Expiration",
            "LastUpdated",
        ] {
            assert!(v[k].as_str().is_some_and(|s| !s.is_empty()), "{k}");
        }
        assert!(remaining(v["Expiration"].as_str().unwrap()) > 30.0 * 60.0);
        assert!(v["Expiration"].as_str().unwrap().ends_with('Z'));
        let unknown = http(d.imds(), "GET", &format!("{base}other-role"), &h);
        assert_eq!(unknown.status, 404, "unknown role on {base}");
    }
    // The same credentials the container endpoint serves.
    let c = d.creds().json();
    let i = http(d.imds(), "GET", &format!("{CREDS}demo"), &h).json();
    assert_eq!(c["AccessKeyId"], i["AccessKeyId"]);
    let r = http(d.imds(), "POST", &format!("{CREDS}demo"), &h);
    assert_eq!(r.status, 405);
    let r = http(d.imds(), "GET", "/latest/meta-data/ami-id", &h);
    assert_eq!(r.status, 404);
}

#[test]
fn imdsv1_is_refused_unless_enabled() {
    let d = with_imds("imds-v1off", &[]);
    let r = http(d.imds(), "GET", CREDS, &[]);
    assert_eq!(r.status, 401);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("IMDSv1 is disabled"));

    let d = with_imds("imds-v1on", &["--imds-v1"]);
    let r = http(d.imds(), "GET", CREDS, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"demo");
    // A bad token is still refused when v1 is on.
    let r = http(
        d.imds(),
        "GET",
        CREDS,
        &[("X-aws-ec2-metadata-token", "forged")],
    );
    assert_eq!(r.status, 401);
}

#[test]
fn tokens_expire_after_their_ttl_and_forged_ones_fail() {
    let d = with_imds("imds-expiry", &[]);
    let tok = put_token(&d, "1").text();
    let h = [("X-aws-ec2-metadata-token", tok.as_str())];
    assert_eq!(http(d.imds(), "GET", CREDS, &h).status, 200);
    std::thread::sleep(Duration::from_millis(2100));
    let r = http(d.imds(), "GET", CREDS, &h);
    assert_eq!(r.status, 401, "expired token");
    for forged in [
        "",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "not-base64!",
    ] {
        let r = http(
            d.imds(),
            "GET",
            CREDS,
            &[("X-aws-ec2-metadata-token", forged)],
        );
        assert_eq!(r.status, 401, "{forged:?}");
    }
    // A token from another credvend (another key) is refused too.
    let other = with_imds("imds-expiry2", &[]);
    let foreign = session(&other);
    let r = http(
        d.imds(),
        "GET",
        CREDS,
        &[("X-aws-ec2-metadata-token", &foreign)],
    );
    assert_eq!(r.status, 401);
}

#[test]
fn fifty_parallel_token_puts_all_succeed() {
    // F18.
    let d = with_imds("imds-f18", &[]);
    let addr = d.imds();
    let workers: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || http(addr, "PUT", TOKEN, &[(TTL, "21600")])))
        .collect();
    let mut tokens = std::collections::HashSet::new();
    for w in workers {
        let r = w.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header(TTL), Some("21600"));
        tokens.insert(r.text());
    }
    assert!(!tokens.is_empty());
    let tok = tokens.into_iter().next().unwrap();
    assert_eq!(
        http(addr, "GET", CREDS, &[("X-aws-ec2-metadata-token", &tok)]).status,
        200
    );
}

#[test]
fn real_clients_get_the_assumed_role_through_imds() {
    let d = DaemonBuilder::new("imds-clients")
        .moto_role()
        .args(&[
            "--imds-listen",
            "127.0.0.1:0",
            "--session-name",
            "imds-session",
        ])
        .start();
    let env = d.imds_env();
    let want = assumed("imds-session");
    let b = boto3_identity(&env);
    assert_eq!(b["arn"], want.as_str());
    assert_eq!(
        b["method"], "iam-role",
        "boto3 must have used its IMDS provider"
    );
    assert_eq!(aws_cli_identity(&env)["Arn"], want.as_str());
    assert_eq!(rust_sdk_identity("imds", &env)["arn"], want.as_str());
    assert_eq!(rust_sdk_identity("default", &env)["arn"], want.as_str());
}

#[test]
fn imds_tokens_survive_a_restart() {
    // aws-sdk-rust retries a 401 with the same token until its TTL ends, so
    // a restart must not void the tokens it holds.
    let b = DaemonBuilder::new("imds-restart");
    let token_file = b.dir.join("persist-token");
    let port = free_port();
    let imds = format!("127.0.0.1:{port}");
    let args = [
        "--imds-listen",
        &imds,
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    let mut d = b.moto_role().args(&args).start();
    let tok = session(&d);
    let key = token_file.with_file_name("persist-token.imds-key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(5));
    let d2 = DaemonBuilder::new("imds-restart2")
        .moto_role()
        .args(&args)
        .start();
    let r = http(
        d2.imds(),
        "GET",
        CREDS,
        &[("X-aws-ec2-metadata-token", &tok)],
    );
    assert_eq!(
        r.status, 200,
        "a token issued before the restart must still work"
    );
}
