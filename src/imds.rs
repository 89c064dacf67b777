//! An IMDSv2 emulation for one role (sdk-contract section 2).
//!
//! Session tokens are self-contained: an expiry and a MAC under a key that
//! lives only in this process. Checking one needs no lookup, and issuing one
//! stores nothing, so a client that PUTs in a loop cannot grow memory.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::app::Shared;
use crate::container::respond;
use crate::metrics::{Endpoint, Metrics};
use crate::server::{self, json_error, Body, Handler};

pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
pub const MAX_TTL: u64 = 21_600;

const TOKEN_PATH: &str = "/latest/api/token";
const LEGACY: &str = "/latest/meta-data/iam/security-credentials";
const EXTENDED: &str = "/latest/meta-data/iam/security-credentials-extended";
const MAC_LEN: usize = 16;

/// Issues and checks IMDS session tokens.
pub struct TokenMint {
    key: Zeroizing<[u8; 32]>,
}

impl TokenMint {
    /// A mint with a key that lives only in this process.
    pub fn new() -> TokenMint {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut());
        TokenMint { key }
    }

    /// A mint whose key is kept in `path` (0600), so tokens issued before a
    /// restart stay valid for their TTL, as on EC2. Some SDKs (aws-sdk-rust)
    /// keep retrying a 401 with the same token until its TTL ends, so a
    /// restart that voided every token would lock them out for hours.
    pub fn load_or_create(path: &Path) -> Result<TokenMint, crate::auth::TokenError> {
        if let Ok(raw) = std::fs::read(path) {
            let raw = Zeroizing::new(raw);
            if let Ok(bytes) = <[u8; 32]>::try_from(raw.as_slice()) {
                return Ok(TokenMint {
                    key: Zeroizing::new(bytes),
                });
            }
        }
        let mint = TokenMint::new();
        crate::auth::write_secret(path, mint.key.as_ref(), 0o600)?;
        Ok(mint)
    }

    /// Where a role's IMDS key is kept: beside its auth token file.
    pub fn key_path(token_file: &Path) -> std::path::PathBuf {
        let mut name = token_file
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".imds-key");
        token_file.with_file_name(name)
    }

    fn mac(&self, expires: u64) -> [u8; MAC_LEN] {
        let mut m = Hmac::<Sha256>::new_from_slice(self.key.as_ref()).expect("any key length");
        m.update(b"credvend-imds-v1");
        m.update(&expires.to_be_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// A token valid until `now + ttl`.
    pub fn issue(&self, now: SystemTime, ttl: Duration) -> String {
        let expires = unix(now) + ttl.as_secs();
        let mut raw = Vec::with_capacity(8 + MAC_LEN);
        raw.extend_from_slice(&expires.to_be_bytes());
        raw.extend_from_slice(&self.mac(expires));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// True when the token was issued here and has not expired.
    pub fn valid(&self, token: &[u8], now: SystemTime) -> bool {
        let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        if raw.len() != 8 + MAC_LEN {
            return false;
        }
        let expires = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        let good: bool = self.mac(expires).ct_eq(&raw[8..]).into();
        good && unix(now) < expires
    }
}

impl Default for TokenMint {
    fn default() -> Self {
        TokenMint::new()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One IMDS listener, serving one role.
pub struct Imds {
    pub shared: Arc<Shared>,
    /// Config name of the role this listener serves.
    pub role: String,
    pub mint: TokenMint,
    pub allow_v1: bool,
}

impl Handler for Imds {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Imds
    }

    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if path == TOKEN_PATH {
            return self.put_token(&req);
        }
        let rest = path
            .strip_prefix(EXTENDED)
            .or_else(|| path.strip_prefix(LEGACY))
            .filter(|r| r.is_empty() || r.starts_with('/'));
        let Some(rest) = rest else {
            return server::not_found();
        };
        if req.method() != Method::GET {
            return server::method_not_allowed("GET");
        }
        if let Some(denied) = self.check_session(&req) {
            return denied;
        }
        let roles = self.shared.roles.load();
        let Some(role) = roles.by_name(&self.role).cloned() else {
            return server::not_found();
        };
        drop(roles);
        match rest.trim_start_matches('/') {
            // The listing: exactly one name, no newline.
            "" => server::ok(Bytes::from(role.spec.imds_name.clone()), "text/plain"),
            name if name == role.spec.imds_name => {
                let answer = role
                    .answer_waiting(|| self.shared.clock.now(), true, self.shared.cold_wait)
                    .await;
                respond(&role, answer, "text/plain")
            }
            _ => json_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "no such role on this instance",
            ),
        }
    }
}

impl Imds {
    fn put_token(&self, req: &Request<Incoming>) -> Response<Body> {
        if req.method() != Method::PUT {
            return server::method_not_allowed("PUT");
        }
        // As on EC2: a token request relayed by a proxy is refused, which
        // blunts SSRF through open proxies (F19).
        if req.headers().contains_key("x-forwarded-for") {
            return json_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "token requests that carry X-Forwarded-For are refused",
            );
        }
        let ttl = req
            .headers()
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|t| (1..=MAX_TTL).contains(t));
        let Some(ttl) = ttl else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "InvalidTTL",
                "X-aws-ec2-metadata-token-ttl-seconds must be a whole number from 1 to 21600",
            );
        };
        let token = self
            .mint
            .issue(self.shared.clock.now(), Duration::from_secs(ttl));
        self.shared.metrics.imds_tokens.inc();
        let mut r = server::ok(Bytes::from(token), "text/plain");
        r.headers_mut().insert(TTL_HEADER, HeaderValue::from(ttl));
        r
    }

    /// None when the request may proceed; otherwise the 401 to send.
    fn check_session(&self, req: &Request<Incoming>) -> Option<Response<Body>> {
        match req.headers().get(TOKEN_HEADER) {
            Some(t) if self.mint.valid(t.as_bytes(), self.shared.clock.now()) => None,
            Some(_) => Some(json_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "the IMDS session token is invalid or expired; PUT /latest/api/token for a new one",
            )),
            None if self.allow_v1 => None,
            None => Some(json_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "IMDSv1 is disabled: PUT /latest/api/token and send X-aws-ec2-metadata-token",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_key_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("credvend-imds-key-{}", std::process::id()));
        let key = TokenMint::key_path(&dir.join("token"));
        assert_eq!(key.file_name().unwrap(), "token.imds-key");
        let t0 = SystemTime::now();
        let tok = TokenMint::load_or_create(&key)
            .unwrap()
            .issue(t0, Duration::from_secs(60));
        let again = TokenMint::load_or_create(&key).unwrap();
        assert!(again.valid(tok.as_bytes(), t0));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn tokens_expire_and_cannot_be_forged() {
        let mint = TokenMint::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let tok = mint.issue(t0, Duration::from_secs(10));
        assert!(mint.valid(tok.as_bytes(), t0));
        assert!(mint.valid(tok.as_bytes(), t0 + Duration::from_secs(9)));
        assert!(!mint.valid(tok.as_bytes(), t0 + Duration::from_secs(10)));
        assert!(
            !TokenMint::new().valid(tok.as_bytes(), t0),
            "another key must not accept it"
        );
        let mut forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&tok)
            .unwrap();
        forged[7] ^= 1; // push the expiry
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
        assert!(!mint.valid(forged.as_bytes(), t0));
        assert!(!mint.valid(b"not a token", t0));
    }
}
