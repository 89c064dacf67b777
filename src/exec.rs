//! `credvend exec`: run one command with one role's credentials.
//!
//! Owns a private serving session: a temporary directory (0700) holding a
//! fresh auth token, the container endpoint on an ephemeral loopback port
//! (no admin listener: nothing else needs to find this one), the child
//! process, the environment it gets and the signals forwarded to it.
//!
//! It must never hand the child a way around credvend (base credentials,
//! a profile, web identity, the other variable of a container pair), never
//! print the token, and must remove the directory on every exit path it
//! controls. SIGKILL cannot be caught; the directory then stays behind in the
//! runtime directory (a tmpfs cleared at logout) or the system temp dir.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::Cause;
use tokio::sync::mpsc;

use crate::app::{self, App};
use crate::cli::{self, ExecArgs, ServeArgs};
use crate::config;
use crate::run::{self, EXIT_CONFIG, EXIT_FAILURE, EXIT_UPSTREAM};
use crate::state::Clock;
use crate::sts::ErrorClass;

/// Signals passed on to the command. SIGINT, SIGTERM and SIGHUP are the ones
/// people send to stop or poke a program; the rest cost nothing to pass on.
const FORWARDED: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// Removed from the command's environment: each would let its SDK find
/// credentials other than credvend's, or pick the wrong container variable.
const REMOVED: &[&str] = &[
    // Environment credentials come first in every SDK's chain.
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
    // The older spellings the Java and Go SDKs still read.
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    // A named profile comes next (the default one is handled by files).
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CREDENTIAL_FILE",
    // Web identity would let the command assume credvend's own source role.
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    // Exactly one variable of each container pair (F08): ours, set below.
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// Profile keys that make the default profile produce credentials of its
/// own, which SDKs would prefer to the container endpoint.
const CREDENTIAL_KEYS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "credential_process",
    "credential_source",
    "role_arn",
    "source_profile",
    "web_identity_token_file",
    "sso_session",
    "sso_start_url",
    "sso_account_id",
    "sso_role_name",
    "login_session",
];

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot create a private directory for the token in {dir}: {source}")]
    TempDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The private directory; removed with everything in it when dropped.
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    /// Creates a new directory, 0700, under the user's runtime directory
    /// (a per-user tmpfs) or else the system temp dir. The name is random and
    /// the directory must not exist yet, so nobody can prepare it for us.
    pub fn create() -> Result<PrivateDir, ExecError> {
        let parent = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let mut last = None;
        for _ in 0..8 {
            let tag = rand::rng().next_u64();
            let path = parent.join(format!("credvend-exec-{}-{tag:016x}", std::process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(ExecError::TempDir {
                        dir: parent,
                        source: e,
                    })
                }
            }
        }
        Err(ExecError::TempDir {
            dir: parent,
            source: last.unwrap_or_else(|| std::io::Error::other("no free name")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a private file (0600) in the directory.
    fn write(&self, name: &str, text: &str) -> Result<PathBuf, ExecError> {
        use std::io::Write;
        let path = self.0.join(name);
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(text.as_bytes())
        };
        write().map_err(|source| ExecError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("credvend: cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

/// `credvend exec`. Returns the command's exit code (128 + signal when a
/// signal killed it), or credvend's own start-up exit code.
pub fn exec(args: ExecArgs) -> u8 {
    let mut server = match cli::default_server_args() {
        Ok(s) => s,
        Err(e) => {
            let _ = e.print();
            return EXIT_CONFIG;
        }
    };
    // Private by construction: an ephemeral loopback port, no admin
    // listener, no config file roles, and a quick stop once the command ends.
    server.listen = "127.0.0.1:0".into();
    server.advertise_host = None;
    server.config = None;
    server.log_level = Some(args.log_level.clone());
    server.testing_short_sessions |= args.testing_short_sessions;
    server.shutdown_delay = Duration::ZERO;
    server.drain_timeout = Duration::from_secs(1);
    run::init_logging(&server);

    if args.role.imds_listen.is_some() {
        eprintln!(
            "credvend: --imds-listen (or CREDVEND_IMDS_LISTEN) is not used by exec: the \
             command gets the container endpoint; unset it"
        );
        return EXIT_CONFIG;
    }
    if args.role.token_file.is_some() {
        tracing::warn!("exec makes its own private token; ignoring --token-file");
    }
    let serve_args = ServeArgs {
        role: args.role.clone(),
        server,
    };
    let mut settings = match config::load(&serve_args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("credvend: {e}");
            return EXIT_CONFIG;
        }
    };
    settings.admin_listen.clear();

    let dir = match PrivateDir::create() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("credvend: {e}");
            return EXIT_FAILURE;
        }
    };
    for role in &mut settings.roles {
        role.token_file = dir.path().join("token");
    }
    let code =
        run::runtime().block_on(exec_async(settings, &dir, args.start_timeout, args.command));
    // Explicit, so the directory is gone before the process exits.
    drop(dir);
    code
}

async fn exec_async(
    mut settings: config::Settings,
    dir: &PrivateDir,
    start_timeout: Duration,
    command: Vec<OsString>,
) -> u8 {
    // Signals first: a Ctrl-C during start-up must still clean up.
    let mut signals = match listen_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("credvend: cannot install signal handlers: {e}");
            return EXIT_FAILURE;
        }
    };
    let (base, _chained) = match run::prepare_base(&mut settings).await {
        Ok(b) => b,
        Err((code, msg)) => {
            eprintln!("credvend: {msg}");
            return code;
        }
    };
    let (app, firsts) = match App::start(settings, app::sts_factory(base), Clock::Wall).await {
        Ok(a) => a,
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("credvend: {msg}");
            return if msg.contains("no AWS region") {
                EXIT_CONFIG
            } else {
                EXIT_FAILURE
            };
        }
    };

    // The command starts only once its credentials are there.
    let ready = tokio::select! {
        r = first_credentials(&app, firsts, start_timeout) => r,
        sig = signals.recv() => Err((128 + sig.map_or(SIGTERM, |s| s.0) as u8, None)),
    };
    if let Err((code, msg)) = ready {
        if let Some(msg) = msg {
            eprintln!("credvend: {msg}");
        }
        app.begin_shutdown();
        app.finish().await;
        return code;
    }

    let env = match child_env(&app, dir) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("credvend: {e}");
            app.begin_shutdown();
            app.finish().await;
            return EXIT_FAILURE;
        }
    };
    let code = run_child(&command, env, &mut signals).await;
    app.begin_shutdown();
    app.finish().await;
    code
}

/// Waits until every role has credentials. A refusal that needs an operator
/// fails at once; throttling and network trouble are retried by the refresh
/// loop until `timeout`.
async fn first_credentials(
    app: &App,
    firsts: app::FirstOutcomes,
    timeout: Duration,
) -> Result<(), (u8, Option<String>)> {
    let deadline = tokio::time::Instant::now() + timeout;
    for (role, rx) in firsts {
        let Ok(Err(e)) = rx.await else { continue };
        if e.class == ErrorClass::NeedsOperator {
            let hint = e.hint.map(|h| format!(" (hint: {h})")).unwrap_or_default();
            return Err((
                EXIT_UPSTREAM,
                Some(format!(
                    "role `{role}`: STS refused the request: {}: {}{hint}",
                    e.code, e.message
                )),
            ));
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    loop {
        tick.tick().await;
        if app.shared.all_ready() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let why: Vec<String> = app
                .shared
                .not_ready()
                .into_iter()
                .map(|(role, reason)| format!("role `{role}`: {reason}"))
                .collect();
            return Err((
                EXIT_UPSTREAM,
                Some(format!(
                    "no credentials within {}s ({}); not starting the command",
                    timeout.as_secs(),
                    why.join("; ")
                )),
            ));
        }
    }
}

/// The command's environment: credvend's own, minus every other way to
/// credentials, plus the two container variables.
fn child_env(app: &App, dir: &PrivateDir) -> Result<Vec<(OsString, OsString)>, ExecError> {
    let settings = app.settings();
    let role = &settings.roles[0];
    let url = app.full_uri(role);

    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            // credvend's own settings (an external id among them) are not
            // the command's business.
            !REMOVED.contains(&k.as_ref()) && !k.starts_with("CREDVEND_")
        })
        .collect();
    let mut set = |k: &str, v: OsString| {
        env.retain(|(name, _)| name != k);
        env.push((k.into(), v));
    };
    set("AWS_CONTAINER_CREDENTIALS_FULL_URI", url.into());
    set(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        role.token_file.clone().into_os_string(),
    );

    // The default profile of the shared files outranks the container
    // endpoint in every SDK. The credentials file only holds credentials:
    // hide it. The config file also holds region and the like: give the
    // command a copy whose default profile has no credential keys.
    let empty = dir.write("credentials", "")?;
    set("AWS_SHARED_CREDENTIALS_FILE", empty.into_os_string());
    let config_path = std::env::var_os("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".aws/config")));
    if let Some(path) = config_path {
        if let Ok(text) = fs::read_to_string(&path) {
            if let Some((clean, removed)) = strip_default_credentials(&text) {
                let copy = dir.write("config", &clean)?;
                tracing::info!(
                    file = %path.display(),
                    keys = %removed.join(","),
                    "the command gets a copy of the AWS config file without the default \
                     profile's credential settings"
                );
                set("AWS_CONFIG_FILE", copy.into_os_string());
            }
        }
    }
    Ok(env)
}

/// The config file without the credential keys of its default profile, and
/// the keys removed; None when there is nothing to remove.
pub fn strip_default_credentials(text: &str) -> Option<(String, Vec<String>)> {
    let mut in_default = false;
    let mut removed = Vec::new();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            let name = trimmed.trim_matches(|c| c == '[' || c == ']').trim();
            let name: Vec<&str> = name.split_whitespace().collect();
            in_default = name == ["default"] || name == ["profile", "default"];
        } else if in_default && !line.starts_with([' ', '\t']) {
            let key = trimmed
                .split_once('=')
                .map(|(k, _)| k.trim().to_ascii_lowercase());
            if let Some(key) = key.filter(|k| CREDENTIAL_KEYS.contains(&k.as_str())) {
                removed.push(key);
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    (!removed.is_empty()).then_some((out, removed))
}

/// A signal to pass on: its number, and whether it must be forwarded.
#[derive(Debug, Clone, Copy)]
struct Incoming(i32, bool);

/// Catches the forwarded signals on a thread of their own. A signal the
/// kernel raised (Ctrl-C, Ctrl-\, a terminal hangup) already went to the
/// whole foreground process group, the command included, so passing it on
/// would deliver it twice; only signals some process sent to credvend are
/// forwarded.
fn listen_signals() -> std::io::Result<mpsc::UnboundedReceiver<Incoming>> {
    let mut signals = SignalsInfo::<WithOrigin>::new(FORWARDED)?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("exec-signals".into())
        .spawn(move || {
            for origin in signals.forever() {
                let forward = !matches!(origin.cause, Cause::Kernel);
                if tx.send(Incoming(origin.signal, forward)).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// Runs the command to its end, passing signals on; returns its exit code.
async fn run_child(
    command: &[OsString],
    env: Vec<(OsString, OsString)>,
    signals: &mut mpsc::UnboundedReceiver<Incoming>,
) -> u8 {
    let Some((program, rest)) = command.split_first() else {
        return EXIT_CONFIG;
    };
    let spawned = tokio::process::Command::new(program)
        .args(rest)
        .env_clear()
        .envs(env)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            eprintln!("credvend: cannot run {}: {e}", program.to_string_lossy());
            // The shells' convention: 127 not found, 126 not runnable.
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(sig) = signals.recv() => forward(child.id(), sig),
        }
    };
    match status {
        Ok(s) => exit_code(s),
        Err(e) => {
            eprintln!("credvend: lost track of the command: {e}");
            EXIT_FAILURE
        }
    }
}

fn forward(pid: Option<u32>, sig: Incoming) {
    let Incoming(sig, true) = sig else { return };
    // The child is only reaped by `wait` in the same loop, so while `id()`
    // is Some the pid cannot have been reused.
    let pid = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32));
    let signal = rustix::process::Signal::from_named_raw(sig);
    if let (Some(pid), Some(signal)) = (pid, signal) {
        if let Err(e) = rustix::process::kill_process(pid, signal) {
            tracing::warn!(signal = sig, error = %e, "cannot pass the signal on");
        } else {
            tracing::debug!(signal = sig, "signal passed on to the command");
        }
    }
}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
        (None, None) => EXIT_FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_loses_only_its_credential_keys() {
        let text = "[default]\nregion = eu-west-1\naws_access_key_id = AKIDX\n\
                    s3 =\n  max_concurrent_requests = 4\nRole_Arn=arn:aws:iam::1:role/x\n\
                    [profile other]\naws_access_key_id = AKIDY\n";
        let (clean, removed) = strip_default_credentials(text).unwrap();
        assert_eq!(removed, ["aws_access_key_id", "role_arn"]);
        assert!(clean.contains("region = eu-west-1"));
        assert!(clean.contains("  max_concurrent_requests = 4"));
        assert!(!clean.contains("AKIDX") && !clean.contains("role/x"));
        assert!(clean.contains("[profile other]\naws_access_key_id = AKIDY"));

        let (clean, _) =
            strip_default_credentials("[profile default]\nsso_session = corp\n").unwrap();
        assert!(!clean.contains("corp"));
        assert!(strip_default_credentials("[default]\nregion = x\n").is_none());
    }

    #[test]
    fn private_dir_is_0700_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let d = PrivateDir::create().unwrap();
        let p = d.path().to_path_buf();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        d.write("x", "y").unwrap();
        drop(d);
        assert!(!p.exists());
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(15)), 143);
    }
}
