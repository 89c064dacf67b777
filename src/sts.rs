//! Fetching credentials from STS.
//!
//! Owns the STS clients and the translation of every STS outcome into either
//! a [`Credentials`] or a classified [`FetchError`] with a hint for the
//! operator. It never retries by itself (the refresh loop owns timing) and
//! never puts a secret into an error.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_sts::config::Region;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::{PolicyDescriptorType, Tag};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use zeroize::Zeroizing;

use crate::config::{SourceKind, SourceSpec};
use crate::creds::Credentials;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that can produce a fresh credential. The refresh loop owns
/// one per role; tests substitute scripted fakes.
pub trait Fetcher: Send + Sync + 'static {
    fn fetch(&self) -> BoxFuture<'_, Result<Credentials, FetchError>>;
}

/// How the refresh loop should react to a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// STS asked us to slow down.
    Throttled,
    /// Network trouble, timeouts, 5xx: retry with backoff.
    Transient,
    /// Retrying will not help until someone fixes something (trust policy,
    /// keys, token file). Still retried at the backoff cap so a fix heals
    /// without a restart.
    NeedsOperator,
}

impl ErrorClass {
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Throttled => "throttled",
            ErrorClass::Transient => "transient",
            ErrorClass::NeedsOperator => "needs_operator",
        }
    }
}

/// A failed fetch: the STS error code, STS's message, and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FetchError {
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

impl FetchError {
    pub fn new(class: ErrorClass, code: &str, message: impl Into<String>) -> Self {
        FetchError {
            class,
            code: code.to_string(),
            message: message.into(),
            hint: None,
        }
    }
}

const THROTTLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "PriorRequestNotComplete",
];

const OPERATOR_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "RequestExpired",
    "MalformedPolicyDocument",
    "PackedPolicyTooLarge",
    "RegionDisabledException",
    "InvalidIdentityToken",
    "IDPRejectedClaim",
    "ExpiredToken",
    "ExpiredTokenException",
    "ValidationError",
    "InvalidParameterValue",
    "TokenFileUnreadable",
    "NoBaseCredentials",
];

/// An error and its sources on one line, Display only: SDK errors' Debug
/// forms are long and say nothing more to an operator.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// Classifies an STS error code (and HTTP status, when there was one).
pub fn classify(code: &str, status: Option<u16>) -> ErrorClass {
    if THROTTLE_CODES.contains(&code) || status == Some(429) {
        ErrorClass::Throttled
    } else if OPERATOR_CODES.contains(&code) {
        ErrorClass::NeedsOperator
    } else {
        ErrorClass::Transient
    }
}

/// A one-line hint for the usual causes of an STS error code.
pub fn hint(code: &str, spec: &SourceSpec) -> Option<String> {
    let token_file = match &spec.kind {
        SourceKind::WebIdentity { token_file, .. } => token_file.display().to_string(),
        _ => String::new(),
    };
    let web = !token_file.is_empty();
    let h = match code {
        "AccessDenied" | "AccessDeniedException"
            if matches!(spec.kind, SourceKind::SessionToken) =>
        {
            "GetSessionToken needs long-term base credentials (an IAM user's keys): temporary \
             credentials cannot call it; give --role-arn to assume a role instead"
                .to_string()
        }
        "RequestExpired" => {
            "STS saw a request signed too long ago: this host's clock is off by more than \
             5 minutes; check NTP"
                .to_string()
        }
        "AccessDenied" | "AccessDeniedException" => {
            "the role's trust policy does not let this caller assume it, or the external id, \
             session tags or source identity do not match its conditions"
                .to_string()
        }
        "InvalidClientTokenId" | "UnrecognizedClientException" => {
            "the base credentials are not valid: wrong access key, deleted user, or a region \
             not enabled for the account"
                .to_string()
        }
        "SignatureDoesNotMatch" | "IncompleteSignature" => {
            "the base secret key is wrong, or this host's clock is off by more than 5 minutes"
                .to_string()
        }
        "ExpiredToken" | "ExpiredTokenException" if web => format!(
            "the web identity token in {token_file} has expired: check that the kubelet \
             still rotates the projected service account token"
        ),
        "ExpiredToken" | "ExpiredTokenException" => {
            "the base credentials have expired; refresh them (or check the host clock)".into()
        }
        "InvalidIdentityToken" => format!(
            "STS rejected the web identity token in {token_file}: check that the cluster's \
             OIDC provider is registered in IAM and the token audience is sts.amazonaws.com"
        ),
        "IDPRejectedClaim" => "the token's audience or subject does not match the role's \
                               trust policy conditions"
            .into(),
        "MalformedPolicyDocument" => format!(
            "the session policy{} is not a valid IAM policy",
            spec.policy_file
                .as_ref()
                .map(|p| format!(" in {}", p.display()))
                .unwrap_or_default()
        ),
        "PackedPolicyTooLarge" => "the session policy and tags are too large: shorten them".into(),
        "RegionDisabledException" => {
            "STS is not activated in this region for the account: activate it in IAM \
             account settings or use another --region"
                .into()
        }
        "ValidationError" | "InvalidParameterValue" => {
            "STS refused a parameter: usually --duration above the role's maximum session \
             duration (or above 1h when the source credentials are themselves a role session)"
                .into()
        }
        "TokenFileUnreadable" => "make the web identity token file readable by credvend".into(),
        "Timeout" | "ConnectionError" => {
            if spec.sts_endpoint.is_some() || web {
                "STS did not answer: check the network path to the endpoint".into()
            } else {
                "STS did not answer: check the network path (proxy, VPC endpoint) to the \
                 regional endpoint"
                    .into()
            }
        }
        _ => return None,
    };
    Some(h)
}

/// Shared AWS configuration: the base credential chain and defaults that
/// every role's STS client starts from. Loaded once, so a thousand roles
/// share one credential cache.
pub struct Base {
    sdk: aws_types::SdkConfig,
    timeout: Duration,
    clients: std::sync::Mutex<HashMap<ClientKey, aws_sdk_sts::Client>>,
}

/// Roles with the same region, endpoint and signing share a client.
type ClientKey = (Option<String>, Option<String>, bool);

/// What the start-up check of the base credentials found.
#[derive(Debug, Clone)]
pub struct BaseIdentity {
    /// The provider in the default chain that produced them.
    pub provider: String,
    /// True when they are themselves temporary (role chaining limits apply).
    pub temporary: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "no AWS region for STS: set --region (or AWS_REGION), or give --sts-endpoint; \
         credvend uses the regional STS endpoint and will not guess"
    )]
    NoRegion,
    #[error("{0}")]
    NoBaseCredentials(String),
}

impl Base {
    /// Loads the default AWS configuration (region chain, credential chain,
    /// `AWS_ENDPOINT_URL_STS`), without retries: the refresh loop retries.
    pub async fn load(region: Option<String>, sts_timeout: Duration) -> Base {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3).min(sts_timeout))
                    .operation_timeout(sts_timeout)
                    .build(),
            );
        if let Some(r) = region {
            loader = loader.region(Region::new(r));
        }
        let sdk = loader.load().await;
        Base {
            sdk,
            timeout: sts_timeout,
            clients: Default::default(),
        }
    }

    pub fn region(&self) -> Option<String> {
        self.sdk.region().map(|r| r.to_string())
    }

    /// Resolves the base credentials once, so a missing identity fails at
    /// start-up with a message listing what was tried (F23).
    pub async fn check_credentials(&self) -> Result<BaseIdentity, StartupError> {
        let tried = "tried, in order: the environment (AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY), the shared files (~/.aws/credentials and ~/.aws/config, \
             profile AWS_PROFILE or default), web identity (AWS_WEB_IDENTITY_TOKEN_FILE with \
             AWS_ROLE_ARN), the container endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI) and \
             EC2 instance metadata";
        let fix = "fix: export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, set AWS_PROFILE to a \
             configured profile, or run on EC2 with an instance profile (in containers the \
             IMDS hop limit must be 2 or more); or use --web-identity-token-file, which needs \
             no base credentials";
        let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
        if set("AWS_ACCESS_KEY_ID") != set("AWS_SECRET_ACCESS_KEY") {
            let (has, lacks) = if set("AWS_ACCESS_KEY_ID") {
                ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            } else {
                ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
            };
            return Err(StartupError::NoBaseCredentials(format!(
                "{has} is set but {lacks} is not: set both (and AWS_SESSION_TOKEN for temporary \
                 keys), or unset {has} to use the rest of the default chain"
            )));
        }
        let Some(provider) = self.sdk.credentials_provider() else {
            return Err(StartupError::NoBaseCredentials(format!(
                "no base credentials for STS: {tried}; {fix}"
            )));
        };
        let got =
            tokio::time::timeout(Duration::from_secs(8), provider.provide_credentials()).await;
        match got {
            Ok(Ok(c)) => Ok(BaseIdentity {
                provider: guess_provider(),
                temporary: c.session_token().is_some(),
            }),
            Ok(Err(e)) => {
                // The SDK lists each provider's answer after "Attempted:";
                // keep those lines, minus their repeated preamble.
                let chain = error_chain(&e);
                let detail: Vec<String> = chain
                    .split_once("Attempted:")
                    .map(|(_, rest)| rest)
                    .unwrap_or(&chain)
                    .lines()
                    .map(|l| {
                        l.trim()
                            .replace("the credential provider was not enabled: ", "")
                    })
                    .filter(|l| !l.is_empty())
                    .map(|l| format!("\n  {l}"))
                    .collect();
                Err(StartupError::NoBaseCredentials(format!(
                    "no base credentials for STS: {tried}. What each said:{}\n{fix}",
                    detail.concat()
                )))
            }
            Err(_) => Err(StartupError::NoBaseCredentials(format!(
                "no base credentials for STS: the default chain did not answer within 8s; \
                 {tried}; {fix}"
            ))),
        }
    }

    /// The STS client for one role, shared between roles with the same
    /// region and endpoint.
    pub fn client(&self, spec: &SourceSpec) -> Result<aws_sdk_sts::Client, StartupError> {
        let unsigned = matches!(spec.kind, SourceKind::WebIdentity { .. });
        let key = (spec.region.clone(), spec.sts_endpoint.clone(), unsigned);
        let mut clients = self.clients.lock().expect("client map poisoned");
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut b = aws_sdk_sts::config::Builder::from(&self.sdk);
        let region = spec.region.clone().or_else(|| self.region());
        match (region, &spec.sts_endpoint) {
            (Some(r), _) => b = b.region(Region::new(r)),
            // A custom endpoint still needs a signing region.
            (None, Some(_)) => b = b.region(Region::new("us-east-1")),
            (None, None) if self.sdk.endpoint_url().is_some() => {
                b = b.region(Region::new("us-east-1"))
            }
            (None, None) => return Err(StartupError::NoRegion),
        }
        if let Some(ep) = &spec.sts_endpoint {
            b = b.endpoint_url(ep);
        }
        if unsigned {
            // AssumeRoleWithWebIdentity is unsigned; the token is the proof.
            b.set_credentials_provider(None);
        }
        let client = aws_sdk_sts::Client::from_conf(b.build());
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The STS endpoint a role's calls go to, for logs and `check`.
    pub fn endpoint_for(&self, spec: &SourceSpec) -> String {
        if let Some(ep) =
            spec.sts_endpoint
                .as_ref()
                .or(self.sdk.endpoint_url().map(|s| s.to_string()).as_ref())
        {
            return ep.clone();
        }
        let region = spec
            .region
            .clone()
            .or_else(|| self.region())
            .unwrap_or_default();
        let suffix = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        format!("https://sts.{region}.{suffix}")
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Which link of the default chain most likely answered, from what is set.
/// The SDK does not expose the provider's name, so this reads the same
/// inputs the chain reads, in the same order.
fn guess_provider() -> String {
    let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let file = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(default))
    };
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let credentials = read(file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"));
    let config = read(file("AWS_CONFIG_FILE", ".aws/config"));
    // A config file that only sets a region provides no credentials.
    let profile_has_creds = credentials.contains("aws_access_key_id")
        || [
            "aws_access_key_id",
            "credential_process",
            "role_arn",
            "sso_",
        ]
        .iter()
        .any(|k| config.contains(k));
    let name = if set("AWS_ACCESS_KEY_ID") {
        "environment variables"
    } else if profile_has_creds {
        "shared config profile"
    } else if set("AWS_WEB_IDENTITY_TOKEN_FILE") {
        "web identity token"
    } else if set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    {
        "container credentials endpoint"
    } else {
        "EC2 instance metadata"
    };
    name.to_string()
}

/// Fetches one role's credentials with the real STS.
pub struct StsFetcher {
    spec: SourceSpec,
    client: aws_sdk_sts::Client,
}

impl StsFetcher {
    pub fn new(spec: SourceSpec, client: aws_sdk_sts::Client) -> Self {
        StsFetcher { spec, client }
    }

    async fn call(&self) -> Result<Credentials, FetchError> {
        let s = &self.spec;
        let duration = i32::try_from(s.duration.as_secs()).unwrap_or(i32::MAX);
        let policy_arns: Option<Vec<PolicyDescriptorType>> =
            (!s.policy_arns.is_empty()).then(|| {
                s.policy_arns
                    .iter()
                    .map(|a| PolicyDescriptorType::builder().arn(a).build())
                    .collect()
            });
        let (creds, arn) = match &s.kind {
            SourceKind::AssumeRole { role_arn } => {
                let tags: Option<Vec<Tag>> = (!s.tags.is_empty()).then(|| {
                    s.tags
                        .iter()
                        .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
                        .collect()
                });
                let out = self
                    .client
                    .assume_role()
                    .role_arn(role_arn)
                    .role_session_name(&s.session_name)
                    .duration_seconds(duration)
                    .set_external_id(s.external_id.clone())
                    .set_source_identity(s.source_identity.clone())
                    .set_tags(tags)
                    .set_transitive_tag_keys(
                        (!s.transitive_tag_keys.is_empty()).then(|| s.transitive_tag_keys.clone()),
                    )
                    .set_policy(s.policy.clone())
                    .set_policy_arns(policy_arns)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error(e))?;
                let arn = out.assumed_role_user().map(|u| u.arn().to_string());
                (out.credentials, arn)
            }
            SourceKind::WebIdentity {
                role_arn,
                token_file,
            } => {
                let token = read_web_identity_token(token_file).await?;
                let out = self
                    .client
                    .assume_role_with_web_identity()
                    .role_arn(role_arn)
                    .role_session_name(&s.session_name)
                    .web_identity_token(token.as_str())
                    .duration_seconds(duration)
                    .set_policy(s.policy.clone())
                    .set_policy_arns(policy_arns)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error(e))?;
                let arn = out.assumed_role_user().map(|u| u.arn().to_string());
                (out.credentials, arn)
            }
            SourceKind::SessionToken => {
                let out = self
                    .client
                    .get_session_token()
                    .duration_seconds(duration)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error(e))?;
                (out.credentials, None)
            }
        };
        let Some(c) = creds else {
            return Err(FetchError::new(
                ErrorClass::Transient,
                "IncompleteResponse",
                "STS answered without credentials",
            ));
        };
        let expires = SystemTime::try_from(c.expiration).map_err(|_| {
            FetchError::new(
                ErrorClass::Transient,
                "IncompleteResponse",
                "STS expiration is out of range",
            )
        })?;
        let account = arn
            .as_deref()
            .and_then(|a| a.split(':').nth(4))
            .map(str::to_string);
        Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            c.session_token,
            expires,
            account,
        )
        .map_err(|e| FetchError::new(ErrorClass::Transient, "IncompleteResponse", e.to_string()))
    }

    fn sdk_error<E, R>(&self, e: SdkError<E, R>) -> FetchError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
        SdkError<E, R>: ProvideErrorMetadata,
    {
        let (code, status, message) = match &e {
            SdkError::ServiceError(se) => {
                let status = raw_status(se.raw());
                let code = se
                    .err()
                    .code()
                    .map(str::to_string)
                    .unwrap_or_else(|| match status {
                        Some(429) => "Throttling".into(),
                        Some(s) if (200..300).contains(&s) => "InvalidResponse".into(),
                        Some(s) => format!("HTTP{s}"),
                        None => "Unknown".into(),
                    });
                let fallback = match status {
                    Some(s) if (200..300).contains(&s) => {
                        "STS answered 200 with a body that is not an STS response"
                    }
                    _ => "STS returned an error",
                };
                let msg = se.err().message().unwrap_or(fallback).to_string();
                (code, status, msg)
            }
            SdkError::TimeoutError(_) => (
                "Timeout".to_string(),
                None,
                "STS did not answer within --sts-timeout".to_string(),
            ),
            SdkError::DispatchFailure(d) => {
                let what = if d.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                };
                (
                    "ConnectionError".to_string(),
                    None,
                    format!("connecting to STS {what}: {}", error_chain(&e)),
                )
            }
            SdkError::ConstructionFailure(_) => (
                "NoBaseCredentials".to_string(),
                None,
                format!("the STS request could not be built: {}", error_chain(&e)),
            ),
            _ => ("InvalidResponse".to_string(), None, error_chain(&e)),
        };
        // STS quotes invalid parameter values in its messages; never let it
        // quote the external id.
        let message = match &self.spec.external_id {
            Some(x) => message.replace(x.as_str(), "<external-id>"),
            None => message,
        };
        let class = classify(&code, status);
        let hint = hint(&code, &self.spec);
        FetchError {
            class,
            code,
            message,
            hint,
        }
    }
}

fn raw_status<R: std::fmt::Debug + 'static>(raw: &R) -> Option<u16> {
    // `R` is the SDK's HttpResponse; read its status without naming the
    // orphan type.
    let any: &dyn std::any::Any = raw as &dyn std::any::Any;
    any.downcast_ref::<aws_smithy_runtime_api::http::Response>()
        .map(|r| r.status().as_u16())
}

impl Fetcher for StsFetcher {
    fn fetch(&self) -> BoxFuture<'_, Result<Credentials, FetchError>> {
        Box::pin(self.call())
    }
}

/// Reads a projected service-account token afresh (F22): the kubelet swaps
/// the file by rename, so it is opened by path on every call.
pub async fn read_web_identity_token(path: &PathBuf) -> Result<Zeroizing<String>, FetchError> {
    let unreadable = |why: String| {
        let mut e = FetchError::new(
            ErrorClass::NeedsOperator,
            "TokenFileUnreadable",
            format!("web identity token file {}: {why}", path.display()),
        );
        e.hint = Some("check the projected service account token volume and its path".into());
        e
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| unreadable(e.to_string()))?;
    let token = Zeroizing::new(text.trim().to_string());
    drop(Zeroizing::new(text));
    if token.is_empty() {
        return Err(unreadable("is empty".into()));
    }
    Ok(token)
}

/// Shared handle type used by the refresh loop.
pub type SharedFetcher = Arc<dyn Fetcher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_recognised_by_code_and_status() {
        assert_eq!(classify("Throttling", Some(400)), ErrorClass::Throttled);
        assert_eq!(
            classify("RequestLimitExceeded", None),
            ErrorClass::Throttled
        );
        assert_eq!(classify("HTTP429", Some(429)), ErrorClass::Throttled);
        assert_eq!(
            classify("AccessDenied", Some(403)),
            ErrorClass::NeedsOperator
        );
        assert_eq!(
            classify("InternalFailure", Some(500)),
            ErrorClass::Transient
        );
    }
}
