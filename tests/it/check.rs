//! Issue 9, item 2: `credvend check` with the real binary. Each outcome has
//! the right exit code and a message that names the cause; nothing secret
//! is printed and nothing is served or written.

use std::process::{Command, Output};

use crate::common::fake_sts::{FakeSts, Step};
use crate::common::*;

/// `credvend check ARGS` with fake base keys, a region, a closed IMDS port
/// and an empty HOME.
fn check(args: &[&str], env: &[(&str, &str)], unset: &[&str]) -> (Output, String) {
    let home = TempDir::new("check-home");
    let mut cmd = Command::new(bin());
    cmd.arg("check")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", CLOSED)
        .env("AWS_ACCESS_KEY_ID", BASE_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", BASE_SECRET)
        .env("AWS_REGION", "us-east-1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let out = cmd.output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(BASE_SECRET), "the base secret was printed");
    (out, all)
}

#[test]
fn working_role_reports_source_caller_endpoint_and_session() {
    let url = moto().url();
    let (out, text) = check(&["--role-arn", ROLE_ARN, "--sts-endpoint", &url], &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for want in [
        "AssumeRole",
        url.as_str(),
        "us-east-1",
        "ok, session 1h",
        "environment variables",
        "arn:aws:sts::123456789012:user/moto",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }

    let (out, text) = check(
        &[
            "--role-arn",
            ROLE_ARN,
            "--sts-endpoint",
            &url,
            "--duration",
            "2h",
            "--output",
            "json",
        ],
        &[],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    let role = &v["roles"][0];
    assert_eq!(role["call"], "AssumeRole");
    assert_eq!(role["sts_endpoint"], url.as_str());
    assert_eq!(role["session"]["asked_s"], 7200);
    assert_eq!(role["session"]["obtained_s"], 7200);
    assert_eq!(role["base"]["source"], "environment variables");
    assert_eq!(role["base"]["temporary"], false);
}

#[test]
fn denied_role_exits_69_with_the_code_and_a_hint() {
    let sts = FakeSts::start();
    sts.set_default(Step::deny());
    let (out, text) = check(
        &["--role-arn", ROLE_ARN, "--sts-endpoint", &sts.url()],
        &[],
        &[],
    );
    assert_eq!(out.status.code(), Some(69), "{text}");
    assert!(text.contains("FAILED: AccessDenied"), "{text}");
    assert!(text.contains("trust policy"), "{text}");
}

#[test]
fn missing_web_identity_token_file_is_named() {
    let url = moto().url();
    let (out, text) = check(
        &[
            "--role-arn",
            ROLE_ARN,
            "--sts-endpoint",
            &url,
            "--web-identity-token-file",
            "/nonexistent/credvend/sa-token",
        ],
        &[],
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
    );
    assert_eq!(out.status.code(), Some(69), "{text}");
    assert!(text.contains("AssumeRoleWithWebIdentity"), "{text}");
    assert!(text.contains("/nonexistent/credvend/sa-token"), "{text}");
    assert!(text.contains("TokenFileUnreadable"), "{text}");
}

#[test]
fn missing_base_credentials_say_what_was_tried() {
    let url = moto().url();
    let (out, text) = check(
        &["--role-arn", ROLE_ARN, "--sts-endpoint", &url],
        &[],
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
    );
    assert_eq!(out.status.code(), Some(69), "{text}");
    for want in [
        "NoBaseCredentials",
        "AWS_ACCESS_KEY_ID",
        "~/.aws/credentials",
        "instance metadata",
        "fix:",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
}

#[test]
fn config_roles_are_each_checked_and_nothing_is_written() {
    let sts = FakeSts::start();
    sts.set_default(Step::deny());
    let dir = TempDir::new("check-config");
    let config = dir.join("credvend.toml");
    let url = moto().url();
    std::fs::write(
        &config,
        format!(
            "[roles.good]\nrole_arn = \"{ROLE_ARN}\"\nsts_endpoint = \"{url}\"\n\
             token_file = \"{}\"\n\
             [roles.bad]\nrole_arn = \"{ROLE_ARN}\"\nsts_endpoint = \"{}\"\n\
             token_file = \"{}\"\n",
            dir.join("good.token").display(),
            sts.url(),
            dir.join("bad.token").display()
        ),
    )
    .unwrap();
    let (out, text) = check(
        &["--config", config.to_str().unwrap(), "--output", "json"],
        &[],
        &[],
    );
    assert_eq!(out.status.code(), Some(69), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let by_name = |n: &str| {
        v["roles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("good")["ok"], true);
    assert_eq!(by_name("bad")["ok"], false);
    assert_eq!(by_name("bad")["error"]["code"], "AccessDenied");
    assert!(!dir.join("good.token").exists() && !dir.join("bad.token").exists());
}

#[test]
fn bad_flags_exit_64() {
    let (out, text) = check(&["--role-arn", "not-an-arn"], &[], &[]);
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(text.contains("--role-arn"), "{text}");
}

#[test]
fn completions_and_man_pages_come_out() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.contains("credvend") && s.contains("exec"), "{shell}");
    }
    let out = Command::new(bin()).arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH credvend"),
        "{page}"
    );
    assert!(page.contains("check"));
    let out = Command::new(bin()).args(["man", "exec"]).output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && page.contains("credvend\\-exec"),
        "{page}"
    );
    let out = Command::new(bin()).args(["man", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}
