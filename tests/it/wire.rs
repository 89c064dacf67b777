//! Issue 2, item 5, and sdk-contract section 1: the container endpoint's
//! wire contract, byte for byte where SDKs care.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::*;

fn is_sdk_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[19] == b'Z'
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s.chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19].contains(&i) || c.is_ascii_digit())
}

#[test]
fn credentials_have_exactly_the_sdk_fields_and_timestamp_shape() {
    let d = DaemonBuilder::new("wire-fields").moto_role().start();
    let r = d.creds();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "AccessKeyId",
            "AccountId",
            "Expiration",
            "SecretAccessKey",
            "Token"
        ]
    );
    for k in ["AccessKeyId", "SecretAccessKey", "Token", "Expiration"] {
        assert!(v[k].as_str().is_some_and(|s| !s.is_empty()), "{k} empty");
    }
    let exp = v["Expiration"].as_str().unwrap();
    assert!(
        is_sdk_timestamp(exp),
        "Expiration {exp} is not YYYY-MM-DDTHH:MM:SSZ"
    );
    assert_eq!(v["AccountId"], ACCOUNT);
}

#[test]
fn missing_wrong_and_bearer_tokens_get_401_json_and_never_reach_the_logs() {
    let d = DaemonBuilder::new("wire-auth").moto_role().start();
    let token = d.token();
    let a = d.listen();
    let wrong = "x".repeat(43);
    let bearer = format!("Bearer {token}");
    let cases = [
        ("missing", None, "missing Authorization"),
        ("wrong", Some(wrong.as_str()), "does not open"),
        (
            "bearer",
            Some(bearer.as_str()),
            "without the 'Bearer ' prefix",
        ),
    ];
    for (what, header, says) in cases {
        let h: Vec<(&str, &str)> = header.map(|v| ("Authorization", v)).into_iter().collect();
        let r = http(a, "GET", "/v1/credentials", &h);
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        let v = r.json();
        assert_eq!(v["code"], "Unauthorized");
        assert!(v["message"].as_str().unwrap().contains(says), "{what}: {v}");
        assert!(!r.text().contains(&token));
    }
    assert!(
        !d.log_text().contains(&token),
        "the auth token reached the logs"
    );
}

#[test]
fn unknown_paths_are_404_json_and_other_methods_405() {
    let d = DaemonBuilder::new("wire-404").moto_role().start();
    let token = d.token();
    for path in [
        "/",
        "/v1/credentials/",
        "/v1/credentials/nope",
        "/latest/meta-data/",
        "/v2/credentials",
    ] {
        let r = http(d.listen(), "GET", path, &[("Authorization", &token)]);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["code"], "NotFound");
    }
    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = http(
            d.listen(),
            m,
            "/v1/credentials",
            &[("Authorization", &token)],
        );
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("GET"));
        assert_eq!(r.json()["code"], "MethodNotAllowed");
    }
}

#[test]
fn generated_token_file_is_0600_without_newline() {
    let d = DaemonBuilder::new("wire-token").moto_role().start();
    let raw = std::fs::read(d.token_file()).unwrap();
    assert!(raw.len() >= 43, "at least 32 random bytes, base64url");
    assert!(!raw.ends_with(b"\n") && !raw.contains(&b'\r'));
    assert!(raw
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'));
    let mode = std::fs::metadata(d.token_file())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_token_file_with_a_trailing_newline_still_works() {
    // F05: written by `echo` or an editor.
    let b = DaemonBuilder::new("wire-newline");
    std::fs::write(b.dir.join("token"), "operator-chosen-token-0123456789\n").unwrap();
    let d = b.moto_role().start();
    let r = http(
        d.listen(),
        "GET",
        "/v1/credentials",
        &[("Authorization", "operator-chosen-token-0123456789")],
    );
    assert_eq!(r.status, 200);
}

#[test]
fn env_prints_exactly_one_variable_of_each_pair() {
    // F08: FULL_URI (not RELATIVE_URI) and TOKEN_FILE (not TOKEN).
    let dir = TempDir::new("wire-env");
    let token = dir.join("t");
    let out = credvend_once(
        &[
            "env",
            "--role-arn",
            ROLE_ARN,
            "--listen",
            "127.0.0.1:9911",
            "--token-file",
            token.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "export AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9911/v1/credentials"
                .to_string(),
            format!(
                "export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}",
                token.display()
            ),
        ]
    );
}

#[test]
fn a_non_loopback_advertised_host_is_refused() {
    // F03: SDKs refuse plain http to anything but loopback / link-local.
    for host in ["10.0.0.5", "credvend.default.svc.cluster.local"] {
        let mut d = DaemonBuilder::new("wire-advertise")
            .moto_role()
            .args(&["--advertise-host", host])
            .spawn();
        let status = d.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(64), "{host}");
        let logs = d.log_text();
        assert!(
            logs.contains("loopback") && logs.contains("169.254.170.2"),
            "{logs}"
        );
    }
}

#[test]
fn localhost_listens_on_every_address_and_advertises_ipv4() {
    // F04: a name is bound on each of its addresses.
    let port = free_port();
    let listen = format!("localhost:{port}");
    let d = DaemonBuilder::new("wire-localhost")
        .moto_role()
        .args(&["--listen", &listen])
        .start();
    let token = d.token();
    let v4: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        http(v4, "GET", "/v1/credentials", &[("Authorization", &token)]).status,
        200
    );
    let resolves_v6 = std::net::ToSocketAddrs::to_socket_addrs(&listen)
        .unwrap()
        .any(|a| a.is_ipv6());
    if resolves_v6 {
        let v6: std::net::SocketAddr = format!("[::1]:{port}").parse().unwrap();
        assert_eq!(
            http(v6, "GET", "/v1/credentials", &[("Authorization", &token)]).status,
            200
        );
    }
    let line = d.wait_log("role configured", Duration::from_secs(1));
    assert_eq!(
        line["url"],
        format!("http://127.0.0.1:{port}/v1/credentials")
    );
}

#[test]
fn a_rotated_token_works_at_once() {
    // F07: a client that reads the token file right after a rotation must
    // not wait for credvend's next look at the file.
    let d = DaemonBuilder::new("wire-rotate").moto_role().start();
    let old = d.token();
    for i in 0..5 {
        let new = format!("rotated-token-number-{i}-abcdefghijkl");
        std::fs::write(d.dir.join("token.tmp"), &new).unwrap();
        std::fs::rename(d.dir.join("token.tmp"), d.token_file()).unwrap();
        let r = http(
            d.listen(),
            "GET",
            "/v1/credentials",
            &[("Authorization", &new)],
        );
        assert_eq!(r.status, 200, "rotation {i}: the new token was refused");
    }
    let prev = "rotated-token-number-3-abcdefghijkl";
    let r = http(
        d.listen(),
        "GET",
        "/v1/credentials",
        &[("Authorization", prev)],
    );
    assert_eq!(
        r.status, 200,
        "the previous token is inside its grace period"
    );
    let r = http(
        d.listen(),
        "GET",
        "/v1/credentials",
        &[("Authorization", &old)],
    );
    assert_eq!(r.status, 401, "only the one previous token is kept");
}
