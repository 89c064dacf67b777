//! Command-line flags and their environment variables.
//!
//! Every flag can also come from a `CREDVEND_...` variable, which is how the
//! systemd unit and the Helm chart configure credvend. Flag names are public
//! interface: renaming one breaks deployments.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "credvend",
    version,
    about = "Vends AWS temporary credentials to the programs next to it",
    long_about = "credvend fetches temporary AWS credentials from STS, keeps them fresh in \
                  memory and serves them to unmodified AWS SDKs over the container \
                  credentials endpoint and an IMDSv2 emulation on loopback."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch credentials, keep them fresh and serve them until stopped.
    Serve(ServeArgs),
    /// Print the two `export` lines a workload needs to use a running credvend.
    Env(EnvArgs),
    /// Run one command with a role's credentials, served on a private
    /// loopback port for as long as the command runs.
    Exec(ExecArgs),
    /// Check without serving that every role can get credentials, and say
    /// why not.
    Check(CheckArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print the man page (roff) of credvend, or of one of its commands.
    Man(ManArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub role: RoleArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Args)]
pub struct EnvArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Print the lines for this role of the --config file instead of the
    /// role defined by flags.
    #[arg(long = "role", value_name = "NAME")]
    pub role_name: Option<String>,
}

/// `exec` makes its own token and serves only the container endpoint, so
/// two role options do not apply to it.
#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("token_file", |a| a.hide(true)),
    mut_arg("imds_listen", |a| a.hide(true))
)]
pub struct ExecArgs {
    #[command(flatten)]
    pub role: RoleArgs,

    /// How long to wait for the first credentials before giving up (exit 69)
    /// when STS does not answer or keeps throttling.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub start_timeout: Duration,

    /// credvend's own log level; its logs share stderr with the command's,
    /// so only warnings and errors by default. RUST_LOG is left to the
    /// command.
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    pub log_level: String,

    /// Testing only: allow sessions down to 10s.
    #[arg(long, env = "CREDVEND_TESTING_SHORT_SESSIONS", hide = true)]
    pub testing_short_sessions: bool,

    /// The command to run, and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub role: RoleArgs,

    /// TOML file describing named roles; each is checked.
    #[arg(long, env = "CREDVEND_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,

    /// Time limit of one STS call.
    #[arg(long, env = "CREDVEND_STS_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub sts_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// The command whose page to print (serve, env, exec, check, ...).
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

/// How one role's credentials are obtained. The same options exist per role
/// in the `--config` file.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Role")]
pub struct RoleArgs {
    /// Role to assume. Without it (and without a web identity token file)
    /// credvend serves GetSessionToken credentials of the base identity.
    /// Falls back to AWS_ROLE_ARN when a web identity token file is set.
    #[arg(long, env = "CREDVEND_ROLE_ARN", value_name = "ARN")]
    pub role_arn: Option<String>,

    /// AWS region whose regional STS endpoint is used. Default: AWS_REGION,
    /// AWS_DEFAULT_REGION, the shared config file, then instance metadata.
    #[arg(long, env = "CREDVEND_REGION", value_name = "REGION")]
    pub region: Option<String>,

    /// STS endpoint URL (plain http allowed, for emulators). Default: the
    /// regional endpoint, or AWS_ENDPOINT_URL_STS when set.
    #[arg(long, env = "CREDVEND_STS_ENDPOINT", value_name = "URL")]
    pub sts_endpoint: Option<String>,

    /// Use AssumeRoleWithWebIdentity with the token in this file, re-read on
    /// every call. Falls back to AWS_WEB_IDENTITY_TOKEN_FILE.
    #[arg(long, env = "CREDVEND_WEB_IDENTITY_TOKEN_FILE", value_name = "PATH")]
    pub web_identity_token_file: Option<PathBuf>,

    /// RoleSessionName recorded in CloudTrail. Default: credvend-<hostname>.
    #[arg(long, env = "CREDVEND_SESSION_NAME", value_name = "NAME")]
    pub session_name: Option<String>,

    /// ExternalId required by the role's trust policy.
    #[arg(
        long,
        env = "CREDVEND_EXTERNAL_ID",
        value_name = "ID",
        hide_env_values = true
    )]
    pub external_id: Option<String>,

    /// Session duration asked of STS, 15m to 12h [default: 1h].
    #[arg(long, env = "CREDVEND_DURATION", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// SourceIdentity recorded in CloudTrail for this session.
    #[arg(long, env = "CREDVEND_SOURCE_IDENTITY", value_name = "ID")]
    pub source_identity: Option<String>,

    /// Session tag (repeatable, or comma-separated in the variable).
    #[arg(long = "tag", env = "CREDVEND_TAGS", value_name = "KEY=VALUE", value_delimiter = ',', value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,

    /// Session tag key that passes on to chained roles (repeatable).
    #[arg(
        long = "transitive-tag-key",
        env = "CREDVEND_TRANSITIVE_TAG_KEYS",
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub transitive_tag_keys: Vec<String>,

    /// File holding an inline session policy (JSON), read at start and reload.
    #[arg(long, env = "CREDVEND_POLICY_FILE", value_name = "PATH")]
    pub policy_file: Option<PathBuf>,

    /// Managed policy ARN that further limits the session (repeatable).
    #[arg(
        long = "policy-arn",
        env = "CREDVEND_POLICY_ARNS",
        value_name = "ARN",
        value_delimiter = ','
    )]
    pub policy_arns: Vec<String>,

    /// Start renewing this long before expiry. Default: 35m, or 30% of the
    /// session if longer, for sessions of 1h or more; two thirds of shorter
    /// sessions.
    #[arg(long, env = "CREDVEND_REFRESH_LEAD", value_name = "DURATION", value_parser = parse_duration)]
    pub refresh_lead: Option<Duration>,

    /// Stop serving a credential this long before it really expires (while
    /// renewal fails); requests then get 503 [default: 1m].
    #[arg(long, env = "CREDVEND_MIN_REMAINING", value_name = "DURATION", value_parser = parse_duration)]
    pub min_remaining: Option<Duration>,

    /// File holding the token clients must send in `Authorization`. Created
    /// (mode 0600, no newline) when it does not exist.
    #[arg(long, env = "CREDVEND_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Also serve this role over an IMDSv2 emulation on ADDR (off unless set).
    #[arg(long, env = "CREDVEND_IMDS_LISTEN", value_name = "ADDR")]
    pub imds_listen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of the daemon itself, shared by all roles.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server")]
pub struct ServerArgs {
    /// Container credentials endpoint address (HOST:PORT; a name such as
    /// localhost listens on every address it resolves to).
    #[arg(
        long,
        env = "CREDVEND_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9911"
    )]
    pub listen: String,

    /// Metrics, liveness and readiness address.
    #[arg(
        long,
        env = "CREDVEND_ADMIN_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9912"
    )]
    pub admin_listen: String,

    /// Host put in the advertised AWS_CONTAINER_CREDENTIALS_FULL_URI. Must be
    /// one SDKs accept over plain http: loopback, 169.254.170.2/.23 or
    /// fd00:ec2::23. Default: 127.0.0.1 (or [::1] when listening on IPv6 only).
    #[arg(long, env = "CREDVEND_ADVERTISE_HOST", value_name = "HOST")]
    pub advertise_host: Option<String>,

    /// TOML file describing named roles (see docs/configuration.md).
    #[arg(long, env = "CREDVEND_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Answer IMDSv1 requests (GETs without a session token).
    #[arg(long, env = "CREDVEND_IMDS_V1")]
    pub imds_v1: bool,

    /// IP TTL / IPv6 hop limit of IMDS responses (1 keeps them on this host
    /// or pod network namespace).
    #[arg(long, env = "CREDVEND_IMDS_HOP_LIMIT", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub imds_hop_limit: u32,

    /// First retry delay after a failed renewal (doubles per attempt).
    #[arg(long, env = "CREDVEND_BACKOFF_BASE", value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub backoff_base: Duration,

    /// Longest retry delay; also the retry interval for errors that need an
    /// operator (AccessDenied and similar).
    #[arg(long, env = "CREDVEND_BACKOFF_CAP", value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub backoff_cap: Duration,

    /// How long a request that arrives before the first credentials waits
    /// for them before getting a retryable 503.
    #[arg(long, env = "CREDVEND_COLD_WAIT", value_name = "DURATION", default_value = "400ms", value_parser = parse_duration)]
    pub cold_wait: Duration,

    /// How long the previous auth token stays valid after the token file
    /// changes.
    #[arg(long, env = "CREDVEND_TOKEN_GRACE", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub token_grace: Duration,

    /// Permission bits of token files credvend creates (0600 or 0640).
    #[arg(long, env = "CREDVEND_TOKEN_FILE_MODE", value_name = "OCTAL", default_value = "0600", value_parser = parse_mode)]
    pub token_file_mode: u32,

    /// Time limit of one STS call.
    #[arg(long, env = "CREDVEND_STS_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub sts_timeout: Duration,

    /// Most STS calls started per second across all roles.
    #[arg(long, env = "CREDVEND_STS_RATE", value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub sts_rate: u32,

    /// Refuse, instead of clamping to 1h, a duration that role chaining
    /// cannot give.
    #[arg(long, env = "CREDVEND_STRICT")]
    pub strict: bool,

    /// Most simultaneous client connections per listener.
    #[arg(
        long,
        env = "CREDVEND_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 1024
    )]
    pub max_connections: usize,

    /// Time a client has to send its request headers.
    #[arg(long, env = "CREDVEND_HEADER_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// After SIGTERM, keep serving (while not ready) for this long.
    #[arg(long, env = "CREDVEND_SHUTDOWN_DELAY", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Then wait at most this long for requests in flight.
    #[arg(long, env = "CREDVEND_DRAIN_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Testing only: allow sessions down to 10s (STS itself refuses them;
    /// emulators do not), to watch rotations in seconds.
    #[arg(long, env = "CREDVEND_TESTING_SHORT_SESSIONS", hide = true)]
    pub testing_short_sessions: bool,

    /// Log format.
    #[arg(long, env = "CREDVEND_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level or filter (overrides RUST_LOG), e.g. info or credvend=debug.
    #[arg(long, env = "CREDVEND_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// The server settings as `serve` would have them with no flags: defaults,
/// plus any `CREDVEND_*` variable. For commands that serve privately
/// (`exec`) or not at all (`check`), which then override what they own.
pub fn default_server_args() -> Result<ServerArgs, clap::Error> {
    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        server: ServerArgs,
    }
    Only::try_parse_from(["credvend"]).map(|o| o.server)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}; write a duration such as 90s, 15m, 1h or 1h30m"))
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err("expected KEY=VALUE".to_string()),
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(0o600) => Ok(0o600),
        Ok(0o640) => Ok(0o640),
        _ => Err("token files may be 0600 or 0640 only".to_string()),
    }
}
