//! Issue 2, item 4: unmodified clients (aws-cli, boto3, aws-sdk-rust) get
//! credentials from credvend, and moto reports the assumed role for them.

use crate::common::*;

#[test]
fn assume_role_reaches_aws_cli_boto3_and_rust_sdk() {
    let d = DaemonBuilder::new("e2e-ar")
        .moto_role()
        .args(&["--session-name", "e2e-session"])
        .start();
    let env = d.client_env();
    let want = assumed("e2e-session");

    assert_eq!(aws_cli_identity(&env)["Arn"], want.as_str());

    let b = boto3_identity(&env);
    assert_eq!(b["arn"], want.as_str());
    assert_eq!(
        b["method"], "container-role",
        "boto3 must have used the container provider"
    );

    assert_eq!(rust_sdk_identity("default", &env)["arn"], want.as_str());
    assert_eq!(rust_sdk_identity("ecs", &env)["arn"], want.as_str());
}

#[test]
fn web_identity_needs_no_base_credentials() {
    let b = DaemonBuilder::new("e2e-wi");
    let jwt = b.dir.join("sa-token");
    std::fs::write(
        &jwt,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.sig\n",
    )
    .unwrap();
    let d = b
        .no_env("AWS_ACCESS_KEY_ID")
        .no_env("AWS_SECRET_ACCESS_KEY")
        .moto_role()
        .args(&[
            "--web-identity-token-file",
            jwt.to_str().unwrap(),
            "--session-name",
            "wi-session",
        ])
        .start();
    let env = d.client_env();
    let want = assumed("wi-session");
    assert_eq!(aws_cli_identity(&env)["Arn"], want.as_str());
    assert_eq!(boto3_identity(&env)["arn"], want.as_str());
    assert_eq!(rust_sdk_identity("default", &env)["arn"], want.as_str());
    let line = d.wait_log("role configured", std::time::Duration::from_secs(1));
    assert_eq!(line["source"], "AssumeRoleWithWebIdentity");
}

#[test]
fn irsa_environment_alone_selects_web_identity() {
    // As on EKS: only AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE are set.
    let b = DaemonBuilder::new("e2e-irsa");
    let jwt = b.dir.join("sa-token");
    std::fs::write(&jwt, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJpcnNhIn0.sig").unwrap();
    let url = moto().url();
    let d = b
        .no_env("AWS_ACCESS_KEY_ID")
        .no_env("AWS_SECRET_ACCESS_KEY")
        .env("AWS_ROLE_ARN", ROLE_ARN)
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", jwt.to_str().unwrap())
        .env("AWS_ENDPOINT_URL_STS", &url)
        .args(&["--session-name", "irsa"])
        .start();
    assert_eq!(
        aws_cli_identity(&d.client_env())["Arn"],
        assumed("irsa").as_str()
    );
}

#[test]
fn get_session_token_when_no_role_is_given() {
    let url = moto().url();
    let d = DaemonBuilder::new("e2e-gst")
        .args(&["--sts-endpoint", &url])
        .start();
    let r = d.creds();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert!(v["AccessKeyId"]
        .as_str()
        .is_some_and(|k| !k.is_empty() && k != BASE_KEY_ID));
    assert_ne!(
        v["SecretAccessKey"], BASE_SECRET,
        "the base credentials must never be served"
    );
    let line = d.wait_log("role configured", std::time::Duration::from_secs(1));
    assert_eq!(line["source"], "GetSessionToken");
}

#[test]
fn session_options_reach_sts() {
    let sts = fake_sts::FakeSts::start();
    let b = DaemonBuilder::new("e2e-opts");
    let policy = b.dir.join("policy.json");
    std::fs::write(&policy, r#"{"Version":"2012-10-17","Statement":[]}"#).unwrap();
    let _d = b
        .args(&["--role-arn", ROLE_ARN, "--sts-endpoint", &sts.url()])
        .args(&[
            "--external-id",
            "ext-123",
            "--source-identity",
            "alice",
            "--duration",
            "2h",
        ])
        .args(&[
            "--tag",
            "team=payments",
            "--tag",
            "env=prod",
            "--transitive-tag-key",
            "team",
        ])
        .args(&["--policy-file", policy.to_str().unwrap()])
        .args(&["--policy-arn", "arn:aws:iam::aws:policy/ReadOnlyAccess"])
        .start();
    let req = &sts.requests()[0];
    assert_eq!(req["Action"], "AssumeRole");
    assert_eq!(req["RoleArn"], ROLE_ARN);
    assert_eq!(req["ExternalId"], "ext-123");
    assert_eq!(req["SourceIdentity"], "alice");
    assert_eq!(req["DurationSeconds"], "7200");
    assert!(req["RoleSessionName"].starts_with("credvend-"), "{req:?}");
    let tags: Vec<_> = (1..=2)
        .map(|i| {
            (
                req[&format!("Tags.member.{i}.Key")].clone(),
                req[&format!("Tags.member.{i}.Value")].clone(),
            )
        })
        .collect();
    assert!(
        tags.contains(&("team".into(), "payments".into())),
        "{req:?}"
    );
    assert_eq!(req["TransitiveTagKeys.member.1"], "team");
    assert!(req["Policy"].contains("2012-10-17"));
    assert_eq!(
        req["PolicyArns.member.1.arn"],
        "arn:aws:iam::aws:policy/ReadOnlyAccess"
    );
}
