//! The credential value and its two wire renderings.
//!
//! Owns the secret material fetched from STS. It must never expose a secret
//! through `Debug`, `Display`, a log field or an error: the only place the
//! secret leaves this type is the pre-rendered response body, which is itself
//! wiped when the last response holding it is dropped.

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Temporary AWS credentials as STS returned them.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    #[zeroize(skip)]
    expires: SystemTime,
    #[zeroize(skip)]
    account_id: Option<String>,
}

impl Credentials {
    /// Builds a credential, refusing any that an SDK could not use (F01): every
    /// field must be non-empty, and the expiry must be known.
    pub fn new(
        access_key_id: String,
        secret_access_key: String,
        session_token: String,
        expires: SystemTime,
        account_id: Option<String>,
    ) -> Result<Self, IncompleteCredentials> {
        let missing = [
            ("AccessKeyId", access_key_id.is_empty()),
            ("SecretAccessKey", secret_access_key.is_empty()),
            ("SessionToken", session_token.is_empty()),
        ]
        .into_iter()
        .find(|(_, empty)| *empty);
        if let Some((field, _)) = missing {
            return Err(IncompleteCredentials(field));
        }
        let account_id =
            account_id.filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()));
        Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token,
            expires,
            account_id,
        })
    }

    pub fn expires(&self) -> SystemTime {
        self.expires
    }

    pub fn account_id(&self) -> Option<&str> {
        self.account_id.as_deref()
    }

    /// Renders the container-endpoint body and the IMDS body once, so the
    /// request path only clones a reference-counted buffer.
    pub fn render(&self, last_updated: SystemTime) -> Rendered {
        let expiration = format_timestamp(self.expires);
        let container = WireBody {
            code: None,
            last_updated: None,
            kind: None,
            access_key_id: &self.access_key_id,
            secret_access_key: &self.secret_access_key,
            token: &self.session_token,
            expiration: &expiration,
            account_id: self.account_id.as_deref(),
        };
        let updated = format_timestamp(last_updated);
        let imds = WireBody {
            code: Some("Success"),
            last_updated: Some(&updated),
            kind: Some("AWS-HMAC"),
            ..container
        };
        Rendered {
            expires: self.expires,
            container: secret_json(&container),
            imds: secret_json(&imds),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expires", &format_timestamp(self.expires))
            .finish()
    }
}

/// STS answered without one of the fields every SDK requires.
#[derive(Debug, thiserror::Error)]
#[error("STS returned credentials without {0}")]
pub struct IncompleteCredentials(pub &'static str);

/// Response bodies rendered from one credential.
#[derive(Clone)]
pub struct Rendered {
    pub expires: SystemTime,
    /// `GET /v1/credentials` body.
    pub container: Bytes,
    /// IMDS `security-credentials/<role>` body.
    pub imds: Bytes,
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendered")
            .field("expires", &format_timestamp(self.expires))
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Serialize)]
struct WireBody<'a> {
    #[serde(rename = "Code", skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(rename = "LastUpdated", skip_serializing_if = "Option::is_none")]
    last_updated: Option<&'a str>,
    #[serde(rename = "Type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(rename = "AccessKeyId")]
    access_key_id: &'a str,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: &'a str,
    #[serde(rename = "Token")]
    token: &'a str,
    #[serde(rename = "Expiration")]
    expiration: &'a str,
    #[serde(rename = "AccountId", skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
}

/// A byte buffer that is wiped when the last `Bytes` pointing into it drops.
struct SecretBuf(Vec<u8>);

impl AsRef<[u8]> for SecretBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

fn secret_json(body: &WireBody<'_>) -> Bytes {
    // Sized up front so that serialisation never reallocates and leaves an
    // unwiped copy of the secret behind in freed memory.
    let size = 160
        + body.access_key_id.len()
        + body.secret_access_key.len()
        + body.token.len()
        + body.expiration.len() * 2;
    let mut buf = Vec::with_capacity(size);
    serde_json::to_writer(&mut buf, body).expect("serialising strings cannot fail");
    Bytes::from_owner(SecretBuf(buf))
}

/// `YYYY-MM-DDTHH:MM:SSZ`, UTC, whole seconds (sdk-contract section 1).
/// Sub-second precision is dropped, which only ever moves the advertised
/// expiry earlier.
pub fn format_timestamp(t: SystemTime) -> String {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(_) => 0,
    };
    let dt =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    dt.format(&fmt).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> Credentials {
        Credentials::new(
            "ASIAEXAMPLEKEY".into(),
            "s3cr3t/with+chars".into(),
            "FwoGZXIvYXdzEXAMPLE==".into(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_317_445_900),
            Some("123456789012".into()),
        )
        .unwrap()
    }

    #[test]
    fn timestamp_is_whole_seconds_with_z() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_317_445_900);
        assert_eq!(format_timestamp(t), "2026-12-03T17:04:05Z");
    }

    #[test]
    fn debug_redacts_every_secret() {
        let text = format!("{:?} {:?}", sample(), sample().render(SystemTime::now()));
        for secret in ["ASIAEXAMPLEKEY", "s3cr3t", "FwoGZXIv"] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }

    #[test]
    fn container_body_has_exactly_the_sdk_fields() {
        let r = sample().render(SystemTime::UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_slice(&r.container).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "AccessKeyId",
                "AccountId",
                "Expiration",
                "SecretAccessKey",
                "Token"
            ]
        );
        assert_eq!(v["Expiration"], "2026-12-03T17:04:05Z");
        assert_eq!(v["SecretAccessKey"], "s3cr3t/with+chars");
    }

    #[test]
    fn imds_body_adds_code_type_and_last_updated() {
        let r = sample().render(SystemTime::UNIX_EPOCH + Duration::from_secs(60));
        let v: serde_json::Value = serde_json::from_slice(&r.imds).unwrap();
        assert_eq!(v["Code"], "Success");
        assert_eq!(v["Type"], "AWS-HMAC");
        assert_eq!(v["LastUpdated"], "1970-01-01T00:01:00Z");
        assert_eq!(v["Token"], "FwoGZXIvYXdzEXAMPLE==");
    }

    #[test]
    fn empty_fields_and_bad_account_ids_are_refused_or_dropped() {
        let e = Credentials::new("A".into(), "".into(), "t".into(), SystemTime::now(), None);
        assert!(e.is_err());
        let c = Credentials::new(
            "A".into(),
            "s".into(),
            "t".into(),
            SystemTime::now(),
            Some("x".into()),
        )
        .unwrap();
        assert_eq!(c.account_id(), None);
    }
}
