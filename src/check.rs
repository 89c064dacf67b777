//! `credvend check`: find out, without serving, whether every role can get
//! credentials, and if not, why.
//!
//! Owns the report: for each role, where the base credentials come from and
//! whose they are, the STS endpoint and region, the outcome of the real STS
//! call with the session length obtained, and for a failure the STS error
//! code with a hint. It binds no port and writes no token file. It never
//! prints a secret: credentials obtained are dropped (and wiped) unseen, and
//! of a web identity token only the claims are shown, never the token.

use std::time::{Duration, SystemTime};

use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use base64::Engine;
use serde::Serialize;

use crate::cli::{self, CheckArgs, Output, ServeArgs};
use crate::config::{self, RoleSpec, Settings, SourceKind};
use crate::creds::format_timestamp;
use crate::run::{self, EXIT_CONFIG, EXIT_UPSTREAM};
use crate::sts::{Base, BaseIdentity, Fetcher, StsFetcher};
use crate::timing;

/// What `check` found for one role.
#[derive(Debug, Serialize)]
pub struct RoleReport {
    pub name: String,
    /// The STS call: AssumeRole, AssumeRoleWithWebIdentity or GetSessionToken.
    pub call: &'static str,
    pub role_arn: Option<String>,
    pub sts_endpoint: String,
    pub region: Option<String>,
    /// The base credentials (not used by web identity).
    pub base: Option<BaseReport>,
    pub web_identity: Option<TokenReport>,
    pub ok: bool,
    pub session: Option<SessionReport>,
    pub error: Option<ErrorReport>,
    /// Things that work but deserve a look.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct BaseReport {
    /// The link of the default chain that provided them.
    pub source: String,
    pub temporary: bool,
    /// GetCallerIdentity of the base credentials.
    pub caller_arn: Option<String>,
    pub account: Option<String>,
    pub caller_error: Option<String>,
}

/// The claims of a web identity token (never the token itself).
#[derive(Debug, Serialize)]
pub struct TokenReport {
    pub file: String,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub subject: Option<String>,
    pub expires: Option<String>,
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SessionReport {
    pub asked_s: u64,
    /// The session length STS gave, rounded to the minute.
    pub obtained_s: u64,
    pub expires: String,
    pub account: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ErrorReport {
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

/// `credvend check`. 0 when every role works, 69 when one does not, 64 for
/// bad flags or configuration.
pub fn check(args: CheckArgs) -> u8 {
    let mut server = match cli::default_server_args() {
        Ok(s) => s,
        Err(e) => {
            let _ = e.print();
            return EXIT_CONFIG;
        }
    };
    server.config = args.config.clone();
    server.sts_timeout = args.sts_timeout;
    // The report says everything; logs would only repeat it.
    server.log_level = Some("error".into());
    run::init_logging(&server);
    let settings = match config::load(&ServeArgs {
        role: args.role.clone(),
        server,
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("credvend: {e}");
            return EXIT_CONFIG;
        }
    };
    let reports = run::runtime().block_on(check_roles(settings));
    let ok = reports.iter().all(|r| r.ok);
    match args.output {
        Output::Json => {
            let doc = serde_json::json!({ "ok": ok, "roles": reports });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        Output::Text => print!("{}", render_text(&reports)),
    }
    if ok {
        0
    } else {
        EXIT_UPSTREAM
    }
}

/// Checks every role, one after the other (a handful of STS calls).
pub async fn check_roles(settings: Settings) -> Vec<RoleReport> {
    let region = settings.roles.iter().find_map(|r| r.source.region.clone());
    let base = Base::load(region, settings.server.sts_timeout).await;
    let needs_base = settings
        .roles
        .iter()
        .any(|r| !matches!(r.source.kind, SourceKind::WebIdentity { .. }));
    let identity = if needs_base {
        Some(base.check_credentials().await.map_err(|e| e.to_string()))
    } else {
        None
    };
    let mut out = Vec::new();
    for role in settings.roles {
        out.push(check_role(&base, identity.as_ref(), role).await);
    }
    out
}

async fn check_role(
    base: &Base,
    identity: Option<&Result<BaseIdentity, String>>,
    mut role: RoleSpec,
) -> RoleReport {
    let (call, role_arn) = match &role.source.kind {
        SourceKind::AssumeRole { role_arn } => ("AssumeRole", Some(role_arn.clone())),
        SourceKind::WebIdentity { role_arn, .. } => {
            ("AssumeRoleWithWebIdentity", Some(role_arn.clone()))
        }
        SourceKind::SessionToken => ("GetSessionToken", None),
    };
    let mut report = RoleReport {
        name: role.name.clone(),
        call,
        role_arn,
        sts_endpoint: base.endpoint_for(&role.source),
        region: role.source.region.clone().or_else(|| base.region()),
        base: None,
        web_identity: None,
        ok: false,
        session: None,
        error: None,
        notes: Vec::new(),
    };
    let fail = |report: &mut RoleReport, code: &str, message: String, hint: Option<String>| {
        report.error = Some(ErrorReport {
            code: code.into(),
            message,
            hint,
        });
    };

    let client = match base.client(&role.source) {
        Ok(c) => c,
        Err(e) => {
            fail(&mut report, "NoRegion", e.to_string(), None);
            return report;
        }
    };

    // Where the credentials for the STS call come from.
    let mut chained = false;
    if let SourceKind::WebIdentity { token_file, .. } = &role.source.kind {
        let token = inspect_token(token_file);
        if let Some(aud) = token.audience.iter().find(|a| *a != "sts.amazonaws.com") {
            report.notes.push(format!(
                "the token's audience is `{aud}`; STS expects `sts.amazonaws.com` unless the \
                 IAM OIDC provider lists this audience"
            ));
        }
        report.web_identity = Some(token);
    } else {
        match identity {
            Some(Ok(id)) => {
                chained = id.temporary;
                report.base = Some(caller_identity(&client, id).await);
            }
            Some(Err(message)) => {
                fail(&mut report, "NoBaseCredentials", message.clone(), None);
                return report;
            }
            None => {}
        }
    }

    // Serve clamps a chained session to 1h (F21); check asks what serve
    // would ask.
    let asked = role.source.duration;
    if chained
        && matches!(role.source.kind, SourceKind::AssumeRole { .. })
        && asked > timing::CHAINED_MAX_SESSION
    {
        role.source.duration = timing::CHAINED_MAX_SESSION;
        report.notes.push(format!(
            "the base credentials are temporary (role chaining): STS caps the session at 1h, \
             so serve clamps --duration {}s to 3600s (--strict refuses instead)",
            asked.as_secs()
        ));
    }

    // The real call; the credentials are dropped unseen.
    let fetcher = StsFetcher::new(role.source.clone(), client);
    match fetcher.fetch().await {
        Ok(creds) => {
            let left = creds
                .expires()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            report.ok = true;
            report.session = Some(SessionReport {
                asked_s: role.source.duration.as_secs(),
                obtained_s: round_to_minute(left).as_secs(),
                expires: format_timestamp(creds.expires()),
                account: creds.account_id().map(str::to_string),
            });
        }
        Err(e) => {
            let hint = e
                .hint
                .clone()
                .or_else(|| extra_hint(&e.code, &e.message, chained));
            fail(&mut report, &e.code, e.message, hint);
        }
    }
    report
}

/// GetCallerIdentity with the base credentials: whose they are.
async fn caller_identity(client: &aws_sdk_sts::Client, id: &BaseIdentity) -> BaseReport {
    let mut r = BaseReport {
        source: id.provider.clone(),
        temporary: id.temporary,
        caller_arn: None,
        account: None,
        caller_error: None,
    };
    match client.get_caller_identity().send().await {
        Ok(out) => {
            r.caller_arn = out.arn().map(str::to_string);
            r.account = out.account().map(str::to_string);
        }
        Err(e) => r.caller_error = Some(describe(&e)),
    }
    r
}

/// An SDK error as `Code: message`, or its chain when there is no code.
fn describe<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(se) => format!(
            "{}: {}",
            se.err().code().unwrap_or("Unknown"),
            se.err().message().unwrap_or("STS returned an error")
        ),
        _ => crate::sts::error_chain(e),
    }
}

/// Hints for causes `sts::hint` does not cover, which `check` can tell
/// apart because it knows more about the set-up.
fn extra_hint(code: &str, message: &str, chained: bool) -> Option<String> {
    let lower = message.to_ascii_lowercase();
    if code == "RequestExpired" || lower.contains("signature expired") {
        return Some(
            "this host's clock is off by more than 5 minutes: synchronise it (chrony, \
             systemd-timesyncd)"
                .into(),
        );
    }
    if chained && (code == "ValidationError" || lower.contains("durationseconds")) {
        return Some(
            "the base credentials are themselves a role session (role chaining): STS allows \
             at most 1h; lower --duration"
                .into(),
        );
    }
    None
}

/// Reads a web identity token file and decodes its claims. Nothing of the
/// token but the claims below leaves this function.
fn inspect_token(path: &std::path::Path) -> TokenReport {
    let mut r = TokenReport {
        file: path.display().to_string(),
        issuer: None,
        audience: Vec::new(),
        subject: None,
        expires: None,
        problem: None,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => zeroize::Zeroizing::new(t),
        Err(e) => {
            r.problem = Some(format!("cannot be read: {e}"));
            return r;
        }
    };
    let claims = text
        .trim()
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let Some(claims) = claims else {
        r.problem = Some("is not a JWT (three base64url parts)".into());
        return r;
    };
    let text_claim = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_string);
    r.issuer = text_claim("iss");
    r.subject = text_claim("sub");
    r.audience = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.clone()],
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    if let Some(exp) = claims.get("exp").and_then(|v| v.as_u64()) {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(exp);
        r.expires = Some(format_timestamp(at));
        if at < SystemTime::now() {
            r.problem = Some("has expired: is the kubelet still rotating it?".into());
        }
    }
    r
}

fn round_to_minute(d: Duration) -> Duration {
    if d < Duration::from_secs(120) {
        return Duration::from_secs(d.as_secs());
    }
    Duration::from_secs((d.as_secs() + 30) / 60 * 60)
}

fn human(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// The short table, then what is worth knowing about each role.
pub fn render_text(reports: &[RoleReport]) -> String {
    let rows: Vec<[String; 5]> = reports
        .iter()
        .map(|r| {
            let result = match (&r.session, &r.error) {
                (Some(s), _) => format!("ok, session {}", human(s.obtained_s)),
                (None, Some(e)) => format!("FAILED: {}", e.code),
                (None, None) => "FAILED".into(),
            };
            [
                r.name.clone(),
                r.call.to_string(),
                r.sts_endpoint.clone(),
                r.region.clone().unwrap_or_else(|| "-".into()),
                result,
            ]
        })
        .collect();
    let head = ["ROLE", "CALL", "STS ENDPOINT", "REGION", "RESULT"].map(String::from);
    let mut widths = head.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&head).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for r in reports {
        out.push('\n');
        out.push_str(&format!("{}:\n", r.name));
        if let Some(arn) = &r.role_arn {
            out.push_str(&format!("  role:             {arn}\n"));
        }
        if let Some(b) = &r.base {
            let kind = if b.temporary {
                "temporary"
            } else {
                "long-term"
            };
            let who = match (&b.caller_arn, &b.caller_error) {
                (Some(arn), _) => arn.clone(),
                (None, Some(e)) => format!("unknown (GetCallerIdentity failed: {e})"),
                (None, None) => "unknown".into(),
            };
            out.push_str(&format!(
                "  base credentials: {} ({kind}), caller {who}\n",
                b.source
            ));
        }
        if let Some(t) = &r.web_identity {
            out.push_str(&format!("  token file:       {}", t.file));
            if let Some(p) = &t.problem {
                out.push_str(&format!(" {p}"));
            }
            out.push('\n');
            if t.issuer.is_some() || !t.audience.is_empty() {
                out.push_str(&format!(
                    "  token claims:     iss {}, aud {}, sub {}, exp {}\n",
                    t.issuer.as_deref().unwrap_or("-"),
                    t.audience.join(","),
                    t.subject.as_deref().unwrap_or("-"),
                    t.expires.as_deref().unwrap_or("-")
                ));
            }
        }
        if let Some(s) = &r.session {
            out.push_str(&format!(
                "  session:          {} (asked {}), expires {}\n",
                human(s.obtained_s),
                human(s.asked_s),
                s.expires
            ));
        }
        if let Some(e) = &r.error {
            out.push_str(&format!("  error:            {}: {}\n", e.code, e.message));
            if let Some(h) = &e.hint {
                out.push_str(&format!("  hint:             {h}\n"));
            }
        }
        for n in &r.notes {
            out.push_str(&format!("  note:             {n}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_claims_are_read_without_the_token() {
        let dir = std::env::temp_dir().join(format!("credvend-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t");
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "{}.{}.c2lnbmF0dXJl\n",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"iss":"https://oidc.example","aud":["api"],"sub":"system:sa","exp":1}"#)
        );
        std::fs::write(&path, &jwt).unwrap();
        let r = inspect_token(&path);
        assert_eq!(r.audience, ["api"]);
        assert_eq!(r.subject.as_deref(), Some("system:sa"));
        assert!(r.problem.unwrap().contains("expired"));
        let shown = format!("{:?}", inspect_token(&path));
        assert!(!shown.contains("c2lnbmF0dXJl"));

        std::fs::write(&path, "not a token").unwrap();
        assert!(inspect_token(&path).problem.unwrap().contains("JWT"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn clock_skew_and_chaining_get_hints() {
        assert!(extra_hint("RequestExpired", "", false)
            .unwrap()
            .contains("clock"));
        assert!(
            extra_hint("ValidationError", "DurationSeconds exceeds", true)
                .unwrap()
                .contains("chaining")
        );
        assert!(extra_hint("ValidationError", "x", false).is_none());
    }
}
