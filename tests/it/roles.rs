//! Issue 4, item 3: several roles in one daemon from a TOML config, each
//! behind its own token, on its own schedule, failing alone.

use std::time::Duration;

use crate::common::fake_sts::{FakeSts, Step};
use crate::common::*;

fn role(name: &str, sts: &FakeSts, dir: &TempDir, duration: &str, lead: &str) -> String {
    format!(
        "[roles.{name}]\nrole_arn = \"arn:aws:iam::123456789012:role/{name}\"\n\
         sts_endpoint = \"{}\"\ntoken_file = \"{}\"\nduration = \"{duration}\"\n\
         refresh_lead = \"{lead}\"\n\n",
        sts.url(),
        dir.join(&format!("{name}.token")).display()
    )
}

#[test]
fn three_roles_each_behind_its_own_token_on_its_own_schedule_failing_alone() {
    let sts = FakeSts::start();
    let b = DaemonBuilder::new("roles3");
    let mut cfg = role("alpha", &sts, &b.dir, "12s", "8s");
    cfg += &role("beta", &sts, &b.dir, "60s", "20s");
    cfg += &role("gamma", &sts, &b.dir, "12s", "8s");
    cfg = cfg.replace(
        "[roles.beta]\n",
        "[roles.beta]\nimds_listen = \"127.0.0.1:0\"\n",
    );
    let path = b.dir.join("credvend.toml");
    std::fs::write(&path, cfg).unwrap();
    let d = b
        .args(&[
            "--config",
            path.to_str().unwrap(),
            "--testing-short-sessions",
        ])
        .start();
    let addr = d.listen();
    let tok = |n: &str| std::fs::read_to_string(d.dir.join(&format!("{n}.token"))).unwrap();

    // Each token opens its own role and only it.
    for (name, key) in [("alpha", "alpha"), ("beta", "beta"), ("gamma", "gamma")] {
        let r = http(
            addr,
            "GET",
            &format!("/v1/credentials/{name}"),
            &[("Authorization", &tok(key))],
        );
        assert_eq!(r.status, 200, "{name}");
    }
    let r = http(
        addr,
        "GET",
        "/v1/credentials/beta",
        &[("Authorization", &tok("alpha"))],
    );
    assert_eq!(r.status, 401, "alpha's token must not open beta");
    let r = http(
        addr,
        "GET",
        "/v1/credentials",
        &[("Authorization", &tok("alpha"))],
    );
    assert_eq!(r.status, 404, "no flag role when only --config is given");
    // Beta's IMDS listener serves beta.
    let imds = d.imds();
    let t = http(
        imds,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
    )
    .text();
    let list = http(
        imds,
        "GET",
        "/latest/meta-data/iam/security-credentials/",
        &[("X-aws-ec2-metadata-token", &t)],
    );
    assert_eq!(list.body, b"beta");

    // Gamma breaks; alpha and beta go on.
    sts.set_role("gamma", Step::deny());
    std::thread::sleep(Duration::from_secs(13));
    let r = http(
        addr,
        "GET",
        "/v1/credentials/gamma",
        &[("Authorization", &tok("gamma"))],
    );
    assert_eq!(r.status, 503, "gamma has no valid credentials left");
    assert_eq!(r.json()["code"], "AccessDenied");
    for name in ["alpha", "beta"] {
        let r = http(
            addr,
            "GET",
            &format!("/v1/credentials/{name}"),
            &[("Authorization", &tok(name))],
        );
        assert_eq!(r.status, 200, "{name} must not be affected by gamma");
    }
    // Own schedules: alpha (12 s sessions) renewed several times, beta
    // (60 s sessions, renewed at ~40 s) not yet.
    assert!(
        sts.calls_for("alpha") >= 3,
        "alpha: {}",
        sts.calls_for("alpha")
    );
    assert_eq!(sts.calls_for("beta"), 1);
    let ready = d.admin_get("/readyz");
    assert_eq!(ready.status, 503);
    let v = ready.json();
    let not_ready: Vec<_> = v["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].clone())
        .collect();
    assert_eq!(not_ready, ["gamma"]);
}

#[test]
fn env_prints_a_config_roles_lines() {
    let sts = FakeSts::start();
    let dir = TempDir::new("roles-env");
    let path = dir.join("c.toml");
    std::fs::write(&path, role("beta", &sts, &dir, "1h", "35m")).unwrap();
    let out = credvend_once(
        &["env", "--config", path.to_str().unwrap(), "--role", "beta"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        format!(
            "export AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9911/v1/credentials/beta\n\
             export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}\n",
            dir.join("beta.token").display()
        )
    );
    let out = credvend_once(
        &["env", "--config", path.to_str().unwrap(), "--role", "nope"],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("beta"));
}

#[test]
fn config_errors_name_the_file_the_role_and_the_key() {
    let sts = FakeSts::start();
    let dir = TempDir::new("roles-bad");
    let good = role("ok", &sts, &dir, "1h", "35m");
    let cases = [
        (
            good.replace("duration = \"1h\"", "duration = \"5m\""),
            "key `duration`",
        ),
        (
            good.replace("refresh_lead = \"35m\"", "refresh_lead = \"2h\""),
            "key `refresh_lead`",
        ),
        (good.replace("role_arn", "rol_arn"), "rol_arn"),
        (
            good.replace("arn:aws:iam::123456789012:role/ok", "not-an-arn"),
            "key `role_arn`",
        ),
        (
            format!("{good}{}", good.replace("[roles.ok]", "[roles.twin]")),
            "share the token file",
        ),
        (
            good.replace("token_file", "# token_file"),
            "key `token_file`",
        ),
    ];
    for (text, says) in cases {
        let path = dir.join("c.toml");
        std::fs::write(&path, &text).unwrap();
        let out = credvend_once(
            &["serve", "--config", path.to_str().unwrap()],
            &[("AWS_REGION", "us-east-1")],
        );
        assert_eq!(out.status.code(), Some(64), "{says}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(says) && err.contains("c.toml"),
            "{says}: {err}"
        );
        if !says.contains("share") {
            assert!(
                err.contains("`ok`") || says == "rol_arn",
                "role not named: {err}"
            );
        }
    }
}
