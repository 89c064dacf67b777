//! Issue 9, item 1: `credvend exec` with the real binary, moto and aws-cli.
//! The command sees the assumed role and only the two container variables,
//! credvend exits with the command's code, and the private token directory
//! is gone afterwards, whatever the way out.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::fake_sts::{FakeSts, Step};
use crate::common::*;

/// `credvend exec` with a clean environment: fake base keys, a region, a
/// closed IMDS port, a temp HOME and a runtime dir of its own, so a
/// leftover token directory would show.
struct Exec {
    cmd: Command,
    home: TempDir,
    runtime: TempDir,
}

impl Exec {
    fn new(role_args: &[&str]) -> Exec {
        let home = TempDir::new("exec-home");
        let runtime = TempDir::new("exec-run");
        let mut cmd = Command::new(bin());
        cmd.arg("exec")
            .args(role_args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", CLOSED)
            .env("AWS_ACCESS_KEY_ID", BASE_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", BASE_SECRET)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1");
        Exec { cmd, home, runtime }
    }

    fn moto(session: &str) -> Exec {
        let url = moto().url();
        Exec::new(&[
            "--role-arn",
            ROLE_ARN,
            "--sts-endpoint",
            &url,
            "--session-name",
            session,
        ])
    }

    fn env(mut self, k: &str, v: &str) -> Self {
        self.cmd.env(k, v);
        self
    }

    fn output(mut self, command: &[&str]) -> (Output, TempDir) {
        let out = self.cmd.arg("--").args(command).output().unwrap();
        (out, self.runtime)
    }

    fn spawn(mut self, command: &[&str]) -> (Child, TempDir) {
        let child = self
            .cmd
            .arg("--")
            .args(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, self.runtime)
    }
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).unwrap().next().is_none()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn aws_cli_under_exec_is_the_assumed_role() {
    let url = moto().url();
    let aws = venv().join("bin/aws");
    let (out, runtime) = Exec::moto("exec-cli").output(&[
        aws.to_str().unwrap(),
        "sts",
        "get-caller-identity",
        "--endpoint-url",
        &url,
        "--output",
        "json",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["Arn"], assumed("exec-cli").as_str());
    // Quiet by default: the command's output is all there is.
    assert!(stderr.trim().is_empty(), "credvend logged: {stderr}");
    assert!(is_empty_dir(runtime.path()));
}

#[test]
fn the_command_gets_two_variables_and_no_other_credentials() {
    let py = venv().join("bin/python");
    let probe = "import os, json\n\
t = os.environ.get('AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', '')\n\
st = os.stat(t) if t else None\n\
print(json.dumps({'env': dict(os.environ),\n\
  'token_mode': oct(st.st_mode & 0o777) if st else None,\n\
  'dir_mode': oct(os.stat(os.path.dirname(t)).st_mode & 0o777) if st else None}))\n";
    let ex = Exec::moto("exec-env");
    std::fs::create_dir_all(ex.home.join(".aws")).unwrap();
    std::fs::write(
        ex.home.join(".aws/credentials"),
        "[default]\naws_access_key_id = AKIDFROMPROFILEFILE\naws_secret_access_key = profile-secret-x\n",
    )
    .unwrap();
    std::fs::write(
        ex.home.join(".aws/config"),
        "[default]\nregion = us-east-1\ncredential_process = /bin/false\n[profile work]\nregion = us-east-1\n",
    )
    .unwrap();
    // As under IRSA: credvend itself uses this web identity; the command
    // must not be able to.
    let jwt = ex.home.join("sa-token");
    std::fs::write(&jwt, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJleGVjIn0.sig").unwrap();
    let (out, runtime) = ex
        .env("AWS_SESSION_TOKEN", "base-session-token-credvend-test")
        .env("AWS_PROFILE", "work")
        .env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/leak")
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", "leak-token-value")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", jwt.to_str().unwrap())
        .env("AWS_ROLE_ARN", ROLE_ARN)
        .env("CREDVEND_EXTERNAL_ID", "external-id-credvend-test")
        .env("KEEP_ME", "yes")
        .output(&[py.to_str().unwrap(), "-c", probe]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let env = v["env"].as_object().unwrap();

    let uri = env["AWS_CONTAINER_CREDENTIALS_FULL_URI"].as_str().unwrap();
    assert!(uri.starts_with("http://127.0.0.1:"), "{uri}");
    let token = PathBuf::from(
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]
            .as_str()
            .unwrap(),
    );
    assert!(token.starts_with(runtime.path()), "{}", token.display());
    assert_eq!(v["token_mode"], "0o600");
    assert_eq!(v["dir_mode"], "0o700");
    for gone in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "CREDVEND_EXTERNAL_ID",
    ] {
        assert!(!env.contains_key(gone), "{gone} reached the command");
    }
    assert_eq!(env["KEEP_ME"], "yes");
    let all = serde_json::to_string(env).unwrap();
    let jwt = jwt.to_str().unwrap();
    for secret in [
        BASE_KEY_ID,
        BASE_SECRET,
        "base-session-token",
        "leak-token",
        jwt,
    ] {
        assert!(!all.contains(secret), "{secret} reached the command");
    }
    // The default profile's credentials are out of reach, its region is not.
    let creds = env["AWS_SHARED_CREDENTIALS_FILE"].as_str().unwrap();
    assert!(Path::new(creds).starts_with(runtime.path()));
    let config = env["AWS_CONFIG_FILE"].as_str().unwrap();
    assert!(Path::new(config).starts_with(runtime.path()));

    // Everything private is gone once credvend has exited.
    assert!(!token.exists());
    assert!(is_empty_dir(runtime.path()));
}

#[test]
fn the_command_sees_the_role_through_the_profile_free_files() {
    // With a default profile holding other keys, boto3 in the command still
    // uses credvend (the container provider), not the profile.
    let ex = Exec::moto("exec-boto3");
    std::fs::create_dir_all(ex.home.join(".aws")).unwrap();
    std::fs::write(
        ex.home.join(".aws/credentials"),
        "[default]\naws_access_key_id = AKIDFROMPROFILEFILE\naws_secret_access_key = profile-secret-x\n",
    )
    .unwrap();
    let py = venv().join("bin/python");
    let probe = root().join("tests/py/probe.py");
    let url = moto().url();
    let (out, _runtime) = ex.output(&[py.to_str().unwrap(), probe.to_str().unwrap(), &url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["arn"], assumed("exec-boto3").as_str());
    assert_eq!(v["method"], "container-role");
}

#[test]
fn exit_code_is_the_commands() {
    for (script, want) in [("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", 128 + 15)] {
        let (out, runtime) = Exec::moto("exec-code").output(&["sh", "-c", script]);
        assert_eq!(
            out.status.code(),
            Some(want),
            "{script}: {}",
            text(&out.stderr)
        );
        assert!(is_empty_dir(runtime.path()), "{script}: token dir left");
    }
    let (out, _) = Exec::moto("exec-missing").output(&["/nonexistent/credvend-cmd"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("/nonexistent/credvend-cmd"));
}

/// Starts `exec` with a command that prints its token path and then waits;
/// returns credvend, the token path and the runtime dir.
fn start_waiting() -> (Child, PathBuf, TempDir) {
    let (mut child, runtime) = Exec::moto("exec-sig").spawn(&[
        "sh",
        "-c",
        "echo \"$AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE\"; exec sleep 30",
    ]);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let token = PathBuf::from(line.trim());
    assert!(token.exists(), "token file {} missing", token.display());
    (child, token, runtime)
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "exec did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn signals_reach_the_command_and_the_token_goes_away() {
    for (sig, code) in [("INT", 130), ("TERM", 143)] {
        let (mut child, token, runtime) = start_waiting();
        kill(child.id(), sig);
        let status = wait_exit(&mut child);
        assert_eq!(status.code(), Some(code), "SIG{sig}");
        assert!(!token.exists(), "SIG{sig}: token file left behind");
        assert!(is_empty_dir(runtime.path()), "SIG{sig}: token dir left");
    }
}

#[test]
fn sts_refusal_stops_before_the_command_runs() {
    let sts = FakeSts::start();
    sts.set_default(Step::deny());
    let ex = Exec::new(&["--role-arn", ROLE_ARN, "--sts-endpoint", &sts.url()]);
    let marker = ex.home.join("ran");
    let script = format!("touch {}", marker.display());
    let (out, runtime) = ex.output(&["sh", "-c", &script]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("AccessDenied") && stderr.contains("trust policy"),
        "{stderr}"
    );
    assert!(!stderr.contains(BASE_SECRET));
    assert!(!marker.exists(), "the command ran without credentials");
    assert!(is_empty_dir(runtime.path()));
}

#[test]
fn credentials_are_renewed_while_the_command_runs() {
    // A 12 s session is renewed after about 4 s (two thirds of it ahead).
    let sts = FakeSts::start();
    let ex = Exec::new(&[
        "--role-arn",
        ROLE_ARN,
        "--sts-endpoint",
        &sts.url(),
        "--duration",
        "12s",
        "--testing-short-sessions",
    ]);
    let (out, _runtime) = ex.output(&["sleep", "6"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(sts.calls() >= 2, "only {} STS call(s)", sts.calls());
}
