//! Shared test harness: the STS emulator (moto), the real credvend binary,
//! the real SDK clients, a scriptable fake STS and a raw HTTP client.
//! Everything talks to 127.0.0.1 only.

#![allow(dead_code)] // each test module uses a different part of the harness

pub mod fake_sts;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/demo";
pub const ACCOUNT: &str = "123456789012";
/// Base credentials given to credvend in tests. Fake, but they must never
/// appear in its output either.
pub const BASE_KEY_ID: &str = "AKIDCREDVENDTESTBASE";
pub const BASE_SECRET: &str = "base-secret-credvend-test-0123456789";
/// A loopback port nothing listens on: the IMDS link of the default chain
/// is pointed here so it fails fast and never leaves the machine.
pub const CLOSED: &str = "http://127.0.0.1:9";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv made by scripts/setup-test-env. Missing tools are a failure,
/// not a skip: run the tests through scripts/test.
pub fn venv() -> PathBuf {
    let v = std::env::var_os("CREDVEND_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-test"));
    assert!(
        v.join("bin/python").exists(),
        "the test venv {} is missing: run scripts/test (or scripts/setup-test-env)",
        v.display()
    );
    v
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_credvend"))
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("credvend-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// moto's STS, one per test binary. It exits when our end of its stdin
/// closes, so it never outlives the tests.
pub struct Moto {
    pub port: u16,
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

impl Moto {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let script = "import sys\n\
from moto.server import ThreadedMotoServer\n\
s = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n\
s.start()\n\
print(s._server.server_port, flush=True)\n\
sys.stdin.read()\n\
s.stop()\n";
        let mut child = Command::new(venv().join("bin/python"))
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("moto printed its port");
        let stdin = child.stdin.take().unwrap();
        Moto {
            port,
            _stdin: Mutex::new(stdin),
            _child: Mutex::new(child),
        }
    })
}

/// An HTTP response read off the wire.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection, read to the end.
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(addr, req.as_bytes())
}

/// Like [`http`], but None when the connection is refused or closed
/// without a response.
pub fn try_http(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<Resp> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.windows(4)
        .any(|w| w == b"\r\n\r\n")
        .then(|| parse(&buf))
}

/// Sends raw bytes and parses whatever comes back.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

pub fn parse(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response: {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

/// A loopback port that was free a moment ago, for tests that must restart
/// credvend on the same address.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Flags the builder sets itself, which a test may override.
const REPLACEABLE: &[&str] = &[
    "--listen",
    "--admin-listen",
    "--log-format",
    "--log-level",
    "--token-file",
];

/// How to start the real binary.
pub struct DaemonBuilder {
    pub args: Vec<String>,
    pub env: HashMap<String, String>,
    pub dir: TempDir,
}

impl DaemonBuilder {
    /// `credvend serve` on ephemeral loopback ports, JSON logs at debug,
    /// a clean environment with fake base credentials and a region.
    pub fn new(tag: &str) -> DaemonBuilder {
        let dir = TempDir::new(tag);
        let mut env = HashMap::new();
        env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
        env.insert("HOME".into(), dir.path().display().to_string());
        env.insert("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), CLOSED.into());
        env.insert("AWS_ACCESS_KEY_ID".into(), BASE_KEY_ID.into());
        env.insert("AWS_SECRET_ACCESS_KEY".into(), BASE_SECRET.into());
        env.insert("AWS_REGION".into(), "us-east-1".into());
        // Safety net: a role a test forgets to point at an emulator goes to
        // a closed loopback port, never to the real STS.
        env.insert("AWS_ENDPOINT_URL_STS".into(), CLOSED.into());
        let token = dir.join("token").display().to_string();
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--token-file",
            &token,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        DaemonBuilder { args, env, dir }
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }
    /// Appends flags; a flag the builder already set (`--listen`,
    /// `--token-file`, ...) has its value replaced instead.
    pub fn args(mut self, a: &[&str]) -> Self {
        let mut i = 0;
        while i < a.len() {
            let existing = self.args.iter().position(|x| x == a[i]);
            match (existing, a.get(i + 1)) {
                (Some(p), Some(v)) if REPLACEABLE.contains(&a[i]) => {
                    self.args[p + 1] = v.to_string();
                    i += 2;
                }
                _ => {
                    self.args.push(a[i].to_string());
                    i += 1;
                }
            }
        }
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }
    pub fn no_env(mut self, k: &str) -> Self {
        self.env.remove(k);
        self
    }
    /// Against moto, assuming ROLE_ARN.
    pub fn moto_role(self) -> Self {
        let url = moto().url();
        self.args(&["--role-arn", ROLE_ARN, "--sts-endpoint", &url])
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(self) -> Daemon {
        let mut child = Command::new(bin())
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("credvend starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        Daemon {
            child,
            logs,
            dir: self.dir,
            exited: None,
        }
    }

    /// Starts and waits until every role is ready.
    pub fn start(self) -> Daemon {
        let d = self.spawn();
        d.wait_log("ready: every role", Duration::from_secs(20));
        d
    }
}

pub struct Daemon {
    pub child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub dir: TempDir,
    exited: Option<ExitStatus>,
}

impl Daemon {
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Log lines parsed as JSON.
    pub fn log_json(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for a log line whose message contains `msg`; returns it parsed.
    pub fn wait_log(&self, msg: &str, timeout: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self
                .log_json()
                .into_iter()
                .find(|v| v["message"].as_str().is_some_and(|m| m.contains(msg)))
            {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "no log line with {msg:?} within {timeout:?}; logs:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many log lines contain `msg` in their message.
    pub fn count_log(&self, msg: &str) -> usize {
        self.log_json()
            .iter()
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(msg)))
            .count()
    }

    fn addr_from_log(&self, msg: &str) -> SocketAddr {
        let v = self.wait_log(msg, Duration::from_secs(20));
        let addrs = v["addrs"].as_str().unwrap_or_default();
        let inner = addrs
            .trim_start_matches('[')
            .split(',')
            .next()
            .unwrap()
            .trim_end_matches(']');
        inner
            .parse()
            .unwrap_or_else(|_| panic!("no address in {v}"))
    }

    pub fn listen(&self) -> SocketAddr {
        self.addr_from_log("container credentials endpoint listening")
    }
    pub fn admin(&self) -> SocketAddr {
        self.addr_from_log("admin endpoint listening")
    }
    pub fn imds(&self) -> SocketAddr {
        self.addr_from_log("IMDS listening")
    }
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.token_file()).unwrap()
    }
    pub fn url(&self) -> String {
        format!("http://{}/v1/credentials", self.listen())
    }

    /// GET /v1/credentials with the right token.
    pub fn creds(&self) -> Resp {
        let t = self.token();
        http(
            self.listen(),
            "GET",
            "/v1/credentials",
            &[("Authorization", &t)],
        )
    }

    /// GET on the admin listener.
    pub fn admin_get(&self, path: &str) -> Resp {
        http(self.admin(), "GET", path, &[])
    }

    /// The value of one metric series in /metrics (exact label text).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.admin_get("/metrics").text();
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {sig} failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.exited = Some(s);
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "credvend did not exit within {timeout:?}; logs:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Environment for a client process using the container endpoint.
    pub fn client_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI".into(), self.url()),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(),
                self.token_file().display().to_string(),
            ),
        ]
    }

    /// Environment for a client process using the IMDS emulation.
    pub fn imds_env(&self) -> Vec<(String, String)> {
        vec![(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
            format!("http://{}", self.imds()),
        )]
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs credvend for a command that ends by itself (`env`, a start-up
/// that must fail), with a clean environment plus `env`.
pub fn credvend_once(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("credvend runs")
}

/// Runs a client command with a clean environment plus `env`; returns
/// (success, stdout, stderr).
pub fn client(cmd: &Path, args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let home = TempDir::new("client-home");
    let out = Command::new(cmd)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", CLOSED)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("client runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// aws-cli: `aws sts get-caller-identity` against moto.
pub fn aws_cli_identity(env: &[(String, String)]) -> serde_json::Value {
    let url = moto().url();
    let aws = venv().join("bin/aws");
    let (ok, out, err) = client(
        &aws,
        &[
            "sts",
            "get-caller-identity",
            "--endpoint-url",
            &url,
            "--output",
            "json",
        ],
        env,
    );
    assert!(ok, "aws-cli failed: {err}");
    serde_json::from_str(&out).unwrap()
}

/// boto3: the default chain, then GetCallerIdentity against moto.
/// Returns {"arn", "method"} where method is botocore's provider name.
pub fn boto3_identity(env: &[(String, String)]) -> serde_json::Value {
    let url = moto().url();
    let py = venv().join("bin/python");
    let probe = root().join("tests/py/probe.py");
    let (ok, out, err) = client(&py, &[probe.to_str().unwrap(), &url], env);
    assert!(ok, "boto3 probe failed: {err}");
    serde_json::from_str(out.trim()).unwrap()
}

/// aws-sdk-rust: examples/sdk_probe.rs with the given provider.
pub fn rust_sdk_identity(provider: &str, env: &[(String, String)]) -> serde_json::Value {
    let url = moto().url();
    let exe = bin().parent().unwrap().join("examples/sdk_probe");
    assert!(
        exe.exists(),
        "{} missing: run the tests with `cargo test --all-targets`",
        exe.display()
    );
    let (ok, out, err) = client(&exe, &[provider, &url], env);
    assert!(ok, "aws-sdk-rust probe failed: {err}");
    serde_json::from_str(out.trim()).unwrap()
}

/// The assumed-role ARN moto reports for a session.
pub fn assumed(session: &str) -> String {
    format!("arn:aws:sts::{ACCOUNT}:assumed-role/demo/{session}")
}

/// A keep-alive HTTP/1.1 connection for request loops.
pub struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(s),
        })
    }

    /// Sends a GET and reads one response (Content-Length framed).
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Resp> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.get_mut().write_all(req.as_bytes())?;
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_string());
        }
        let status = head[0]
            .split(' ')
            .nth(1)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        let headers: Vec<(String, String)> = head[1..]
            .iter()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body)?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

/// Seconds from now until an `Expiration` timestamp.
pub fn remaining(expiration: &str) -> f64 {
    let t = time::OffsetDateTime::parse(expiration, &time::format_description::well_known::Rfc3339)
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    (t - now).as_seconds_f64()
}
