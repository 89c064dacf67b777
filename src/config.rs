//! Resolved configuration: the roles to serve and the server settings.
//!
//! Turns flags and the optional TOML file into validated [`RoleSpec`]s. Every
//! error names the flag, or the file, role and key, and says how to fix it.
//! It must never echo a value that could be secret (external ids are not
//! printed; policies are named by their file).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{RoleArgs, ServeArgs, ServerArgs};
use crate::timing::{self, Timing};

/// The label and path of the role defined by flags.
pub const DEFAULT_ROLE: &str = "default";
pub const CONTAINER_PATH: &str = "/v1/credentials";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Which STS call provides a role's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    AssumeRole {
        role_arn: String,
    },
    WebIdentity {
        role_arn: String,
        token_file: PathBuf,
    },
    SessionToken,
}

/// Everything needed to fetch one role's credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceSpec {
    pub kind: SourceKind,
    pub region: Option<String>,
    pub sts_endpoint: Option<String>,
    pub session_name: String,
    pub external_id: Option<String>,
    pub duration: Duration,
    pub source_identity: Option<String>,
    pub tags: Vec<(String, String)>,
    pub transitive_tag_keys: Vec<String>,
    pub policy_file: Option<PathBuf>,
    pub policy: Option<String>,
    pub policy_arns: Vec<String>,
}

impl std::fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSpec")
            .field("kind", &self.kind)
            .field("region", &self.region)
            .field("sts_endpoint", &self.sts_endpoint)
            .field("session_name", &self.session_name)
            .field("external_id", &self.external_id.as_ref().map(|_| "<set>"))
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

/// One role as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSpec {
    /// Label in metrics and logs; the config key, or `default`.
    pub name: String,
    /// Path of the container endpoint for this role.
    pub path: String,
    /// Role name listed by IMDS.
    pub imds_name: String,
    pub source: SourceSpec,
    pub timing: Timing,
    pub token_file: PathBuf,
    pub imds_listen: Option<String>,
}

impl RoleSpec {
    pub fn warnings(&self) -> Option<String> {
        timing::validate(
            self.source.duration,
            Some(self.timing.lead),
            self.timing.min_remaining,
        )
        .ok()
        .and_then(|(_, w)| w)
    }
}

/// Server-wide settings, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerArgs,
    pub listen: Vec<SocketAddr>,
    pub admin_listen: Vec<SocketAddr>,
    pub advertise_host: String,
    pub roles: Vec<RoleSpec>,
}

impl Settings {
    /// The URL a workload puts in AWS_CONTAINER_CREDENTIALS_FULL_URI for a
    /// role, on the configured port.
    pub fn full_uri(&self, role: &RoleSpec) -> String {
        self.full_uri_on(self.listen.first().map(|a| a.port()).unwrap_or(0), role)
    }

    /// The same URL on a given port (the one really bound, when the
    /// configured port was 0).
    pub fn full_uri_on(&self, port: u16, role: &RoleSpec) -> String {
        format!("http://{}:{}{}", self.advertise_host, port, role.path)
    }
}

const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(60);
const DEFAULT_DURATION: Duration = Duration::from_secs(3600);

/// Builds the settings from flags, environment and the config file.
pub fn load(args: &ServeArgs) -> Result<Settings, ConfigError> {
    let server = args.server.clone();
    check_server(&server)?;
    let listen = resolve_listen("--listen", &server.listen)?;
    let admin_listen = resolve_listen("--admin-listen", &server.admin_listen)?;
    let advertise_host = advertise_host(server.advertise_host.as_deref(), &listen)?;

    let min_session = if server.testing_short_sessions {
        Duration::from_secs(10)
    } else {
        timing::MIN_SESSION
    };
    let mut roles = Vec::new();
    let mut file_roles = match &server.config {
        Some(path) => load_file(path, min_session)?,
        None => Vec::new(),
    };
    // --region and --sts-endpoint (or AWS_ENDPOINT_URL_STS) are defaults
    // for the file's roles: a role pointed at an emulator by flag must not
    // quietly go to the real STS because the file does not repeat it.
    let endpoint = default_endpoint(&args.role)?;
    for r in &mut file_roles {
        r.source.region = r.source.region.take().or_else(|| args.role.region.clone());
        r.source.sts_endpoint = r.source.sts_endpoint.take().or_else(|| endpoint.clone());
    }
    let flags_define_role = server.config.is_none()
        || args.role.role_arn.is_some()
        || args.role.web_identity_token_file.is_some();
    if flags_define_role {
        roles.push(role_from_flags(&args.role, min_session)?);
    }
    roles.extend(file_roles);
    if roles.is_empty() {
        return Err(invalid(format!(
            "config file {} defines no roles: add a [roles.NAME] table",
            server
                .config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )));
    }
    check_unique(&roles).map_err(|e| match &server.config {
        Some(path) => ConfigError::File {
            path: path.clone(),
            message: e.to_string(),
        },
        None => e,
    })?;
    Ok(Settings {
        server,
        listen,
        admin_listen,
        advertise_host,
        roles,
    })
}

/// `--sts-endpoint`, else `AWS_ENDPOINT_URL_STS` (unless the SDK's
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is set), checked once here so that
/// logs and `check` name the endpoint really used.
fn default_endpoint(r: &RoleArgs) -> Result<Option<String>, ConfigError> {
    let ignore_env = std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let env = (!ignore_env)
        .then(|| std::env::var("AWS_ENDPOINT_URL_STS").ok())
        .flatten()
        .filter(|v| !v.is_empty());
    let (source, value) = match (&r.sts_endpoint, env) {
        (Some(v), _) => ("--sts-endpoint", Some(v.clone())),
        (None, Some(v)) => ("AWS_ENDPOINT_URL_STS", Some(v)),
        (None, None) => ("", None),
    };
    if let Some(v) = &value {
        if !(v.starts_with("http://") || v.starts_with("https://")) {
            return Err(invalid(format!(
                "{source} {v} is not an http:// or https:// URL"
            )));
        }
    }
    Ok(value)
}

/// Server settings that parse but cannot work.
fn check_server(s: &ServerArgs) -> Result<(), ConfigError> {
    let ms = |d: Duration| d.as_millis();
    let problem = if s.max_connections == 0 {
        Some("--max-connections 0 would refuse every client; use 1 or more (default 1024)".into())
    } else if s.sts_timeout < Duration::from_secs(1) {
        Some(format!(
            "--sts-timeout {}ms is too short for any STS call; use 1s or more",
            ms(s.sts_timeout)
        ))
    } else if s.backoff_base < Duration::from_millis(10) {
        Some("--backoff-base below 10ms would retry STS in a tight loop; use 10ms or more".into())
    } else if s.backoff_cap < s.backoff_base {
        Some(format!(
            "--backoff-cap {}ms is below --backoff-base {}ms; the cap must be at least the base",
            ms(s.backoff_cap),
            ms(s.backoff_base)
        ))
    } else if s.cold_wait > Duration::from_secs(5) {
        Some(format!(
            "--cold-wait {}ms makes clients wait longer than their own timeouts (JavaScript gives \
             up after 1s); use at most 5s (default 400ms)",
            ms(s.cold_wait)
        ))
    } else if s.header_timeout < Duration::from_millis(100) {
        Some("--header-timeout below 100ms would cut off ordinary clients; use 1s or more".into())
    } else {
        None
    };
    match problem {
        Some(p) => Err(invalid(p)),
        None => Ok(()),
    }
}

fn check_unique(roles: &[RoleSpec]) -> Result<(), ConfigError> {
    for (i, a) in roles.iter().enumerate() {
        for b in &roles[i + 1..] {
            if a.name == b.name {
                return Err(invalid(format!(
                    "role name `{}` is used twice (the role given by flags is named `{DEFAULT_ROLE}`): \
                     rename the [roles.{}] table",
                    a.name, b.name
                )));
            }
            if same_file(&a.token_file, &b.token_file) {
                return Err(invalid(format!(
                    "roles `{}` and `{}` share the token file {}: give each role its own, \
                     so that one role's token cannot open the other",
                    a.name,
                    b.name,
                    a.token_file.display()
                )));
            }
            // Port 0 asks for a fresh port each time, so it cannot clash.
            let fixed = a.imds_listen.as_deref().is_some_and(|l| !l.ends_with(":0"));
            if fixed && a.imds_listen == b.imds_listen {
                return Err(invalid(format!(
                    "roles `{}` and `{}` both set imds_listen {}: an IMDS listener serves one role",
                    a.name,
                    b.name,
                    a.imds_listen.as_deref().unwrap_or_default()
                )));
            }
        }
    }
    Ok(())
}

/// True when two paths name the same file, however they are spelled
/// (`..`, symlinks, relative paths); the files may not exist yet.
fn same_file(a: &Path, b: &Path) -> bool {
    fn identity(p: &Path) -> PathBuf {
        if let Ok(c) = std::fs::canonicalize(p) {
            return c;
        }
        let parent = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match (std::fs::canonicalize(parent), p.file_name()) {
            (Ok(dir), Some(name)) => dir.join(name),
            _ => p.to_path_buf(),
        }
    }
    a == b || identity(a) == identity(b)
}

/// Resolves `HOST:PORT`; a name yields every address it resolves to (F04).
pub fn resolve_listen(flag: &str, value: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let mut addrs: Vec<SocketAddr> = value
        .to_socket_addrs()
        .map_err(|e| {
            invalid(format!(
                "{flag} {value}: {e}; write HOST:PORT such as 127.0.0.1:9911 or [::1]:9911"
            ))
        })?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(invalid(format!("{flag} {value} resolves to no address")));
    }
    Ok(addrs)
}

/// Hosts that every SDK accepts over plain http (sdk-contract section 1).
pub fn sdk_accepts_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match bare.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => true,
        Ok(ip) => ["169.254.170.2", "169.254.170.23", "fd00:ec2::23"]
            .iter()
            .any(|a| a.parse::<IpAddr>().ok() == Some(ip)),
        Err(_) => false,
    }
}

fn advertise_host(flag: Option<&str>, listen: &[SocketAddr]) -> Result<String, ConfigError> {
    if let Some(host) = flag {
        if !sdk_accepts_host(host) {
            return Err(invalid(format!(
                "--advertise-host {host}: AWS SDKs only accept plain http to loopback \
                 (127.0.0.1, [::1], localhost) or the link-local ECS/EKS addresses \
                 169.254.170.2, 169.254.170.23 and [fd00:ec2::23]; a Service name or pod IP \
                 would be refused by every client, so keep the default 127.0.0.1"
            )));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        return Ok(match bare.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{bare}]"),
            _ => bare.to_string(),
        });
    }
    // Prefer the IPv4 literal: every SDK accepts it, and names can resolve
    // to addresses credvend does not listen on (F04).
    let v4 = listen
        .iter()
        .any(|a| a.is_ipv4() || a.ip().is_unspecified());
    Ok(if v4 {
        "127.0.0.1".into()
    } else {
        "[::1]".into()
    })
}

fn role_from_flags(r: &RoleArgs, min_session: Duration) -> Result<RoleSpec, ConfigError> {
    // EKS IRSA sets these two variables for the pod; honour them when no
    // flag says otherwise.
    let env_token = std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").map(PathBuf::from);
    let web_identity = r.web_identity_token_file.clone().or(env_token);
    let role_arn = r.role_arn.clone().or_else(|| {
        web_identity
            .as_ref()
            .and_then(|_| std::env::var("AWS_ROLE_ARN").ok())
    });
    let kind = match (role_arn, web_identity) {
        (Some(arn), Some(file)) => SourceKind::WebIdentity {
            role_arn: arn,
            token_file: file,
        },
        (Some(arn), None) => SourceKind::AssumeRole { role_arn: arn },
        (None, Some(file)) => {
            return Err(invalid(format!(
                "a web identity token file ({}) is set but no role: give --role-arn \
                 (or AWS_ROLE_ARN)",
                file.display()
            )))
        }
        (None, None) => SourceKind::SessionToken,
    };
    let token_file = r.token_file.clone().unwrap_or_else(default_token_file);
    let name = DEFAULT_ROLE.to_string();
    let raw = RawRole {
        role_arn: None,
        region: r.region.clone(),
        sts_endpoint: default_endpoint(r)?,
        web_identity_token_file: None,
        session_name: r.session_name.clone(),
        external_id: r.external_id.clone(),
        duration: None,
        source_identity: r.source_identity.clone(),
        tags: r.tags.iter().cloned().collect(),
        transitive_tag_keys: r.transitive_tag_keys.clone(),
        policy_file: r.policy_file.clone(),
        policy_arns: r.policy_arns.clone(),
        refresh_lead: None,
        min_remaining: None,
        token_file: None,
        imds_listen: r.imds_listen.clone(),
    };
    let durations = Durations {
        duration: r.duration,
        refresh_lead: r.refresh_lead,
        min_remaining: r.min_remaining,
    };
    build_role(
        name,
        CONTAINER_PATH.to_string(),
        kind,
        raw,
        durations,
        token_file,
        min_session,
    )
    .map_err(|(key, msg)| invalid(format!("{}: {msg}", flag_for(key))))
}

/// The command-line flag behind a config key, for error messages.
fn flag_for(key: &str) -> String {
    match key {
        "tags" => "--tag".into(),
        "transitive_tag_keys" => "--transitive-tag-key".into(),
        "policy_arns" => "--policy-arn".into(),
        k => format!("--{}", k.replace('_', "-")),
    }
}

/// Where the token file goes when none is given: systemd's runtime
/// directory, then the user's, then /run/credvend.
pub fn default_token_file() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may list several, separated by ':'.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        return Path::new(&first).join("token");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&dir).join("credvend").join("token");
    }
    PathBuf::from("/run/credvend/token")
}

struct Durations {
    duration: Option<Duration>,
    refresh_lead: Option<Duration>,
    min_remaining: Option<Duration>,
}

/// A role in the config file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    role_arn: Option<String>,
    region: Option<String>,
    sts_endpoint: Option<String>,
    web_identity_token_file: Option<PathBuf>,
    session_name: Option<String>,
    external_id: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    duration: Option<Duration>,
    source_identity: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    transitive_tag_keys: Vec<String>,
    policy_file: Option<PathBuf>,
    #[serde(default)]
    policy_arns: Vec<String>,
    #[serde(default, deserialize_with = "de_duration")]
    refresh_lead: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    min_remaining: Option<Duration>,
    token_file: Option<PathBuf>,
    imds_listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    roles: BTreeMap<String, RawRole>,
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    crate::cli::parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn load_file(path: &Path, min_session: Duration) -> Result<Vec<RoleSpec>, ConfigError> {
    let file_err = |message: String| ConfigError::File {
        path: path.to_path_buf(),
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| file_err(format!("cannot be read: {e}")))?;
    let raw: RawFile = toml::from_str(&text).map_err(|e| file_err(toml_error(&text, &e)))?;
    let mut roles = Vec::new();
    for (name, mut r) in raw.roles {
        let role_err =
            |key: &str, msg: String| file_err(format!("role `{name}`, key `{key}`: {msg}"));
        if !valid_role_name(&name) {
            return Err(role_err(
                "name",
                "role names may use letters, digits, '-', '_' and '.' (at most 64)".into(),
            ));
        }
        let Some(token_file) = r.token_file.take() else {
            return Err(role_err(
                "token_file",
                "missing: every role needs its own token file".into(),
            ));
        };
        let kind = match (r.role_arn.take(), r.web_identity_token_file.take()) {
            (Some(arn), Some(file)) => SourceKind::WebIdentity {
                role_arn: arn,
                token_file: file,
            },
            (Some(arn), None) => SourceKind::AssumeRole { role_arn: arn },
            (None, Some(_)) => {
                return Err(role_err(
                    "role_arn",
                    "missing: web identity needs the role to assume".into(),
                ))
            }
            (None, None) => SourceKind::SessionToken,
        };
        let durations = Durations {
            duration: r.duration,
            refresh_lead: r.refresh_lead,
            min_remaining: r.min_remaining,
        };
        let path = format!("{CONTAINER_PATH}/{name}");
        let spec = build_role(
            name.clone(),
            path,
            kind,
            r,
            durations,
            token_file,
            min_session,
        )
        .map_err(|(key, msg)| role_err(key, msg))?;
        roles.push(spec);
    }
    Ok(roles)
}

/// A TOML error as "line L, column C: message", without the quoted source
/// line toml adds, and without the message when the line sets a secret
/// (serde's messages can quote the value).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_string();
    };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    let message = if SECRET_KEYS.contains(&key) {
        format!("the value of `{key}` is not valid (not shown: it may be secret)")
    } else {
        e.message().to_string()
    };
    format!("line {line_no}, column {column}: {message}")
}

/// Role keys whose values are never printed.
const SECRET_KEYS: &[&str] = &["external_id"];

fn valid_role_name(name: &str) -> bool {
    !name.is_empty()
        && !name.bytes().all(|b| b == b'.')
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Shared by flags and file: checks one role. Errors carry the key at fault.
fn build_role(
    name: String,
    path: String,
    kind: SourceKind,
    r: RawRole,
    d: Durations,
    token_file: PathBuf,
    min_session: Duration,
) -> Result<RoleSpec, (&'static str, String)> {
    if let SourceKind::AssumeRole { role_arn } | SourceKind::WebIdentity { role_arn, .. } = &kind {
        check_role_arn(role_arn).map_err(|m| ("role_arn", m))?;
    }
    let duration = d.duration.unwrap_or(DEFAULT_DURATION);
    let min_remaining = d.min_remaining.unwrap_or(DEFAULT_MIN_REMAINING);
    let min_remaining = if min_session < timing::MIN_SESSION {
        d.min_remaining.unwrap_or(Duration::from_secs(2))
    } else {
        min_remaining
    };
    let (timing, _) =
        timing::validate_with_floor(duration, d.refresh_lead, min_remaining, min_session).map_err(
            |e| {
                let key = match e {
                    timing::TimingError::Duration(_) => "duration",
                    timing::TimingError::LeadTooLong { .. } => "refresh_lead",
                    timing::TimingError::FloorAboveLead { .. } => "min_remaining",
                };
                (key, e.to_string())
            },
        )?;
    let session_name = match r.session_name {
        Some(s) => {
            check_session_name(&s).map_err(|m| ("session_name", m))?;
            s
        }
        None => default_session_name(&name),
    };
    if let Some(e) = &r.external_id {
        if e.len() < 2 || e.len() > 1224 {
            return Err(("external_id", "must be 2 to 1224 characters".into()));
        }
        // STS's pattern; a value outside it would come back quoted in
        // STS's ValidationError message.
        if !e
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c))
        {
            return Err((
                "external_id",
                "may use letters, digits and _+=,.@:/- only (value not shown)".into(),
            ));
        }
    }
    if let Some(s) = &r.source_identity {
        check_session_name(s).map_err(|m| ("source_identity", m))?;
    }
    if r.tags.len() > 50 {
        return Err(("tags", "STS accepts at most 50 session tags".into()));
    }
    for k in &r.transitive_tag_keys {
        if !r.tags.contains_key(k) {
            return Err((
                "transitive_tag_keys",
                format!("`{k}` is not one of the session tags"),
            ));
        }
    }
    if !r.tags.is_empty() && matches!(kind, SourceKind::SessionToken) {
        return Err((
            "tags",
            "session tags need a role to assume (--role-arn)".into(),
        ));
    }
    if let Some(ep) = &r.sts_endpoint {
        if !(ep.starts_with("http://") || ep.starts_with("https://")) {
            return Err((
                "sts_endpoint",
                format!("{ep} is not an http:// or https:// URL"),
            ));
        }
    }
    let policy = match &r.policy_file {
        Some(p) => Some(read_policy(p).map_err(|m| ("policy_file", m))?),
        None => None,
    };
    if let Some(addr) = &r.imds_listen {
        resolve_listen("imds_listen", addr).map_err(|e| ("imds_listen", e.to_string()))?;
    }
    let imds_name = match &kind {
        SourceKind::AssumeRole { role_arn } | SourceKind::WebIdentity { role_arn, .. }
            if name == DEFAULT_ROLE =>
        {
            role_arn.rsplit('/').next().unwrap_or(&name).to_string()
        }
        _ => name.clone(),
    };
    Ok(RoleSpec {
        name,
        path,
        imds_name,
        source: SourceSpec {
            kind,
            region: r.region,
            sts_endpoint: r.sts_endpoint,
            session_name,
            external_id: r.external_id,
            duration,
            source_identity: r.source_identity,
            tags: r.tags.into_iter().collect(),
            transitive_tag_keys: r.transitive_tag_keys,
            policy_file: r.policy_file,
            policy,
            policy_arns: r.policy_arns,
        },
        timing,
        token_file,
        imds_listen: r.imds_listen,
    })
}

fn read_policy(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
    Ok(text)
}

fn check_role_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[2] == "iam"
        && parts[5].starts_with("role/")
        && parts[5].len() > 5;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{arn}` is not a role ARN; expected arn:aws:iam::123456789012:role/NAME"
        ))
    }
}

/// STS's rule for RoleSessionName and SourceIdentity: 2 to 64 characters
/// of `[\w+=,.@-]`.
fn check_session_name(s: &str) -> Result<(), String> {
    if s.len() < 2 || s.len() > 64 {
        return Err("must be 2 to 64 characters".into());
    }
    if let Some(c) = s.chars().find(|c| !session_char(*c)) {
        return Err(format!(
            "`{c}` is not allowed; use letters, digits and +=,.@_-"
        ));
    }
    Ok(())
}

fn session_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)
}

/// `credvend-<hostname>` (plus the role for config roles), cut to STS's
/// 64-character limit with disallowed characters replaced.
pub fn default_session_name(role: &str) -> String {
    // uname(2) rather than /proc: a hardened unit (ProcSubset=pid) hides
    // /proc/sys/kernel/hostname.
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let host = if host.is_empty() {
        std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into())
    } else {
        host
    };
    let mut name = String::from("credvend-");
    if role != DEFAULT_ROLE {
        name.push_str(role);
        name.push('-');
    }
    name.extend(
        host.trim()
            .chars()
            .map(|c| if session_char(c) { c } else { '-' }),
    );
    name.truncate(64);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_sdks_accept() {
        for ok in [
            "127.0.0.1",
            "127.1.2.3",
            "localhost",
            "[::1]",
            "::1",
            "169.254.170.2",
            "[fd00:ec2::23]",
        ] {
            assert!(sdk_accepts_host(ok), "{ok}");
        }
        for bad in [
            "10.0.0.5",
            "credvend.default.svc",
            "0.0.0.0",
            "169.254.169.254",
            "example.com",
        ] {
            assert!(!sdk_accepts_host(bad), "{bad}");
        }
    }

    #[test]
    fn advertise_defaults_to_ipv4_literal() {
        let l: Vec<SocketAddr> = vec!["0.0.0.0:1".parse().unwrap()];
        assert_eq!(advertise_host(None, &l).unwrap(), "127.0.0.1");
        let l6: Vec<SocketAddr> = vec!["[::1]:1".parse().unwrap()];
        assert_eq!(advertise_host(None, &l6).unwrap(), "[::1]");
        let err = advertise_host(Some("10.1.2.3"), &l)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("loopback") && err.contains("169.254.170.2"),
            "{err}"
        );
    }

    #[test]
    fn session_names_follow_sts_rules() {
        let n = default_session_name(
            "a-very-long-role-name-that-goes-on-and-on-and-on-forever-and-more",
        );
        assert!(n.len() <= 64);
        assert!(check_session_name(&n).is_ok(), "{n}");
        assert!(check_session_name("has space").is_err());
    }

    #[test]
    fn role_arn_shape_is_checked() {
        assert!(check_role_arn("arn:aws:iam::123456789012:role/app").is_ok());
        assert!(check_role_arn("arn:aws-cn:iam::123456789012:role/path/app").is_ok());
        assert!(check_role_arn("app").is_err());
        assert!(check_role_arn("arn:aws:iam::123456789012:user/bob").is_err());
    }

    #[test]
    fn file_errors_name_file_role_and_key() {
        let dir = std::env::temp_dir().join(format!("credvend-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[roles.reader]\nrole_arn = \"arn:aws:iam::123456789012:role/r\"\n\
             token_file = \"/tmp/x\"\nduration = \"5m\"\n",
        )
        .unwrap();
        let err = load_file(&path, timing::MIN_SESSION)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.toml") && err.contains("`reader`") && err.contains("`duration`"),
            "{err}"
        );

        std::fs::write(&path, "[roles.reader]\nrol_arn = \"x\"\n").unwrap();
        let err = load_file(&path, timing::MIN_SESSION)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rol_arn") && err.contains("c.toml"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
