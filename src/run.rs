//! The commands: `serve` (the daemon's lifecycle) and `env`.
//!
//! Start-up order: validate flags and config (exit 64), check the base
//! credentials (exit 69), bind, fetch, serve; READY=1 once every role has
//! credentials. Then signals: SIGHUP reloads, SIGTERM drains and exits 0.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::app::{self, App};
use crate::cli::{EnvArgs, LogFormat, ServeArgs, ServerArgs};
use crate::config::{self, RoleSpec, Settings, SourceKind};
use crate::signal::{self, Event};
use crate::state::Clock;
use crate::sts::{Base, ErrorClass};
use crate::timing;

/// Bad flags or configuration (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// STS or the base credentials refused us at start-up (EX_UNAVAILABLE).
pub const EXIT_UPSTREAM: u8 = 69;
/// Anything else that stops start-up.
pub const EXIT_FAILURE: u8 = 1;

/// Crates whose verbose logs could contain request signatures or bodies:
/// capped whatever the requested level, so no filter can print a secret.
const CAPPED: &[&str] = &[
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_smithy_http",
    "aws_smithy_types",
    "aws_credential_types",
    "aws_config",
    "aws_runtime",
    "aws_sdk_sts",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
];

pub fn init_logging(server: &ServerArgs) {
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;

    let base = server
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&base).unwrap_or_else(|e| {
        eprintln!("credvend: ignoring log filter {base:?}: {e}; using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    // A separate filter, not EnvFilter directives: a more specific directive
    // such as `aws_sigv4::http_request=trace` would override `aws_sigv4=info`.
    let cap = tracing_subscriber::filter::filter_fn(|meta| {
        matches!(
            *meta.level(),
            tracing::Level::ERROR | tracing::Level::WARN | tracing::Level::INFO
        ) || !is_capped(meta.target())
    });
    // Colours only for a terminal: journald, files and kubectl logs get
    // plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let layer = match server.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.with_target(false).boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(cap))
        .init();
}

/// True for targets in (or below) a crate whose verbose logs could show
/// credentials.
fn is_capped(target: &str) -> bool {
    CAPPED.iter().any(|c| {
        target
            .strip_prefix(c)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Reports a fatal start-up error once: as a JSON log line when logs are
/// JSON (for log pipelines), else as a plain line on stderr.
fn fatal(server: &ServerArgs, msg: &str) {
    match server.log_format {
        LogFormat::Json => tracing::error!("{msg}"),
        LogFormat::Text => eprintln!("credvend: {msg}"),
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("credvend")
        .build()
        .expect("the tokio runtime starts")
}

/// `credvend serve`.
pub fn serve(args: ServeArgs) -> u8 {
    init_logging(&args.server);
    let settings = match config::load(&args) {
        Ok(s) => s,
        Err(e) => {
            fatal(&args.server, &format!("invalid configuration: {e}"));
            return EXIT_CONFIG;
        }
    };
    runtime().block_on(serve_async(args, settings))
}

async fn serve_async(args: ServeArgs, mut settings: Settings) -> u8 {
    // First of all, so that a SIGHUP or SIGTERM during start-up is queued
    // and handled once serving, instead of killing the process.
    let signals = match signal::listen() {
        Ok(s) => s,
        Err(e) => {
            fatal(
                &args.server,
                &format!("cannot install signal handlers: {e}"),
            );
            return EXIT_FAILURE;
        }
    };
    let (base, chained) = match prepare_base(&mut settings).await {
        Ok(b) => b,
        Err((code, msg)) => {
            fatal(&args.server, &msg);
            return code;
        }
    };
    for role in &settings.roles {
        if let Some(w) = role.warnings() {
            tracing::warn!(role = %role.name, "{w}");
        }
    }
    let factory = app::sts_factory(base.clone());
    let (mut app, firsts) = match App::start(settings, factory, Clock::Wall).await {
        Ok(a) => a,
        Err(e) => {
            let msg = format!("{e:#}");
            fatal(&args.server, &format!("cannot start: {msg}"));
            return if msg.contains("NoRegion") || msg.contains("no AWS region") {
                EXIT_CONFIG
            } else {
                EXIT_FAILURE
            };
        }
    };
    log_listening(&app, &base);

    // A role STS refuses outright at start-up stops credvend with the cause
    // (an operator is deploying it now); throttling and network trouble are
    // retried while readiness stays false.
    for (role, rx) in firsts {
        let Ok(outcome) = rx.await else { continue };
        if let Err(e) = outcome {
            if e.class == ErrorClass::NeedsOperator {
                let msg = format!(
                    "role `{role}`: STS refused the first request: {}: {}{}",
                    e.code,
                    e.message,
                    e.hint
                        .as_ref()
                        .map(|h| format!(" (hint: {h})"))
                        .unwrap_or_default()
                );
                fatal(&args.server, &msg);
                app.begin_shutdown();
                app.finish().await;
                return EXIT_UPSTREAM;
            }
        }
    }

    let shared = app.shared.clone();
    tokio::spawn(announce_ready(shared.clone()));
    if let Some(every) = signal::watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                signal::notify(&[NotifyState::Watchdog]);
            }
        });
    }
    run_until_stopped(&mut app, &args, chained, signals).await;
    app.finish().await;
    tracing::info!("stopped");
    0
}

async fn run_until_stopped(
    app: &mut App,
    args: &ServeArgs,
    chained: bool,
    mut signals: tokio::sync::mpsc::UnboundedReceiver<Event>,
) {
    while let Some(ev) = signals.recv().await {
        match ev {
            Event::Reload => reload(app, args, chained).await,
            Event::Stop => break,
        }
    }
    let delay = app.settings().server.shutdown_delay;
    tracing::info!(
        delay_ms = delay.as_millis() as u64,
        "shutting down: not ready, still serving"
    );
    signal::notify(&[NotifyState::Stopping]);
    app.begin_shutdown();
    // A second SIGTERM/SIGINT skips the rest of the delay.
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = async { while signals.recv().await == Some(Event::Reload) {} } => {
            tracing::info!("second stop signal: skipping the shutdown delay");
        }
    }
    tracing::info!("no longer accepting connections; draining");
}

async fn reload(app: &mut App, args: &ServeArgs, chained: bool) {
    signal::notify(&[NotifyState::Reloading, monotonic()]);
    tracing::info!("reloading configuration");
    let result = match config::load(args) {
        Ok(mut new) => match chaining_rules(&mut new, chained) {
            Ok(()) => {
                let wait = new.server.sts_timeout + Duration::from_secs(1);
                app.reload(new, wait).await.map_err(|e| format!("{e:#}"))
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => {
            app.shared
                .metrics
                .config_reloads
                .with_label_values(&["success"])
                .inc();
            tracing::info!(roles = app.settings().roles.len(), "reloaded");
        }
        Err(e) => {
            app.shared
                .metrics
                .config_reloads
                .with_label_values(&["error"])
                .inc();
            tracing::error!(error = %e, "reload rejected; the previous configuration keeps running");
        }
    }
    signal::notify(&[NotifyState::Ready]);
}

fn monotonic() -> NotifyState<'static> {
    sd_notify::NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Ready)
}

/// Reloads apply the start-up duration rules; the base credentials are
/// not re-checked (they may legitimately be renewing).
fn chaining_rules(settings: &mut Settings, chained: bool) -> Result<(), String> {
    if chained {
        for role in &mut settings.roles {
            clamp_for_chaining(role, settings.server.strict)?;
        }
    }
    Ok(())
}

/// Loads the shared AWS configuration and, when some role needs base
/// credentials, checks them (F23) and applies the role-chaining cap (F21).
pub async fn prepare_base(settings: &mut Settings) -> Result<(Arc<Base>, bool), (u8, String)> {
    let region = settings.roles.iter().find_map(|r| r.source.region.clone());
    let base = Base::load(region, settings.server.sts_timeout).await;
    for role in &settings.roles {
        base.client(&role.source)
            .map_err(|e| (EXIT_CONFIG, format!("role `{}`: {e}", role.name)))?;
    }
    let needs_base = settings
        .roles
        .iter()
        .any(|r| !matches!(r.source.kind, SourceKind::WebIdentity { .. }));
    let mut chained = false;
    if needs_base {
        let id = base
            .check_credentials()
            .await
            .map_err(|e| (EXIT_UPSTREAM, e.to_string()))?;
        tracing::info!(source = %id.provider, temporary = id.temporary, "base credentials found");
        chained = id.temporary;
        chaining_rules(settings, chained).map_err(|m| (EXIT_CONFIG, m))?;
    }
    Ok((Arc::new(base), chained))
}

/// Role chaining caps sessions at one hour (F21): clamp with a warning, or
/// refuse in strict mode.
fn clamp_for_chaining(role: &mut RoleSpec, strict: bool) -> Result<(), String> {
    let SourceKind::AssumeRole { .. } = role.source.kind else {
        return Ok(());
    };
    if role.source.duration <= timing::CHAINED_MAX_SESSION {
        return Ok(());
    }
    let asked = role.source.duration.as_secs();
    if strict {
        return Err(format!(
            "role `{}`: --duration {asked}s is not possible: the base credentials are \
             temporary (role chaining), which STS caps at 3600s; lower --duration to 1h",
            role.name
        ));
    }
    tracing::warn!(
        role = %role.name,
        asked_s = asked,
        "the base credentials are temporary (role chaining): STS caps such sessions at 1h; \
         using --duration 1h"
    );
    role.source.duration = timing::CHAINED_MAX_SESSION;
    let lead = (role.timing.lead < timing::CHAINED_MAX_SESSION).then_some(role.timing.lead);
    let (t, _) = timing::validate(timing::CHAINED_MAX_SESSION, lead, role.timing.min_remaining)
        .or_else(|_| timing::validate(timing::CHAINED_MAX_SESSION, None, role.timing.min_remaining))
        .map_err(|e| format!("role `{}`: {e}", role.name))?;
    role.timing = t;
    Ok(())
}

fn log_listening(app: &App, base: &Base) {
    let s = app.settings();
    tracing::info!(addrs = ?app.listen, "container credentials endpoint listening");
    tracing::info!(addrs = ?app.admin, "admin endpoint listening (/metrics, /healthz, /readyz)");
    for r in &s.roles {
        let kind = match &r.source.kind {
            SourceKind::AssumeRole { .. } => "AssumeRole",
            SourceKind::WebIdentity { .. } => "AssumeRoleWithWebIdentity",
            SourceKind::SessionToken => "GetSessionToken",
        };
        tracing::info!(
            role = %r.name,
            source = kind,
            sts_endpoint = %base.endpoint_for(&r.source),
            duration_s = r.source.duration.as_secs(),
            refresh_lead_s = r.timing.lead.as_secs(),
            url = %app.full_uri(r),
            token_file = %r.token_file.display(),
            "role configured"
        );
    }
    if s.listen.iter().any(|a| !a.ip().is_loopback()) {
        tracing::warn!("--listen is not a loopback address: anything that can reach it and read a token file can get credentials");
    }
}

/// Logs "ready" and sends READY=1 once every role has credentials (F12).
async fn announce_ready(shared: Arc<app::Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    loop {
        tick.tick().await;
        if shared.all_ready() {
            shared.update_ready();
            tracing::info!("ready: every role has credentials");
            signal::notify(&[NotifyState::Ready]);
            return;
        }
    }
}

/// `credvend env`: the two lines a workload needs, one variable of each
/// pair (F08).
pub fn env(args: EnvArgs) -> u8 {
    let settings = match config::load(&args.serve) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("credvend: {e}");
            return EXIT_CONFIG;
        }
    };
    let wanted = args.role_name.as_deref().unwrap_or(config::DEFAULT_ROLE);
    let Some(role) = settings.roles.iter().find(|r| r.name == wanted) else {
        let names: Vec<_> = settings.roles.iter().map(|r| r.name.as_str()).collect();
        eprintln!(
            "credvend: no role `{wanted}`; pick one with --role NAME: {}",
            names.join(", ")
        );
        return EXIT_CONFIG;
    };
    let token = std::path::absolute(&role.token_file).unwrap_or(role.token_file.clone());
    println!(
        "export AWS_CONTAINER_CREDENTIALS_FULL_URI={}",
        settings.full_uri(role)
    );
    println!(
        "export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}",
        shell_quote(&token.display().to_string())
    );
    0
}

fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
