//! The authorization token that opens a role's endpoint.
//!
//! Owns reading, creating and rotating token files. The token is compared in
//! constant time and never logged, put in an error or a metric label; only
//! the file's path is ever shown.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Outcome of checking a request's `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Current,
    /// The token before the last rotation, still inside its grace period.
    Previous,
    Missing,
    /// `Bearer <token>` sent instead of the raw token (F06).
    Bearer,
    Wrong,
}

impl Check {
    pub fn allowed(self) -> bool {
        matches!(self, Check::Current | Check::Previous)
    }
}

/// The tokens a role accepts right now.
pub struct TokenSet {
    current: Zeroizing<Vec<u8>>,
    previous: Option<(Zeroizing<Vec<u8>>, Instant)>,
    /// What the file looked like when it was read, to notice rotation.
    stamp: FileStamp,
    /// The file had whitespace (a newline) around the token.
    padded: bool,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    inode: u64,
    len: u64,
}

impl TokenSet {
    /// Checks an `Authorization` header value.
    pub fn check(&self, header: Option<&[u8]>) -> Check {
        let Some(got) = header else {
            return Check::Missing;
        };
        if bool::from(got.ct_eq(&self.current)) {
            return Check::Current;
        }
        if let Some((prev, until)) = &self.previous {
            if Instant::now() < *until && bool::from(got.ct_eq(prev)) {
                return Check::Previous;
            }
        }
        let bearer = got.len() > 7 && got[..7].eq_ignore_ascii_case(b"bearer ");
        if bearer {
            let rest = got[7..].trim_ascii_start();
            let matches_any = bool::from(rest.ct_eq(&self.current))
                || self
                    .previous
                    .as_ref()
                    .is_some_and(|(p, _)| bool::from(rest.ct_eq(p)));
            if matches_any {
                return Check::Bearer;
            }
        }
        Check::Wrong
    }

    /// The same tokens, remembered as read from a file that now looks like
    /// `stamp` (used when the new file could not be used, so it is not
    /// re-read until it changes again).
    pub fn restamped(&self, stamp: FileStamp) -> TokenSet {
        TokenSet {
            current: self.current.clone(),
            previous: self.previous.clone(),
            stamp,
            padded: self.padded,
        }
    }

    /// True when the file held whitespace around the token. credvend trims
    /// it, but SDKs send the file's content as it is and refuse a header
    /// value with CR or LF, so such a file breaks every client.
    pub fn padded(&self) -> bool {
        self.padded
    }

    /// True when both sets hold the same current token.
    pub fn same_token(&self, other: &TokenSet) -> bool {
        bool::from(self.current.ct_eq(&other.current))
    }

    pub fn stamp(&self) -> FileStamp {
        self.stamp
    }

    /// The set after the file changed: the new token, with the old one kept
    /// for `grace` (F07). A file that still holds the same token changes
    /// nothing.
    pub fn rotated(&self, next: TokenSet, grace: Duration) -> TokenSet {
        if next.current == self.current {
            return TokenSet {
                previous: self.previous.clone(),
                ..next
            };
        }
        TokenSet {
            previous: Some((self.current.clone(), Instant::now() + grace)),
            ..next
        }
    }
}

/// Reads the token file, or creates it with a fresh random token when it
/// does not exist. Returns the set and whether the file was created.
pub fn load_or_create(path: &Path, mode: u32) -> Result<(TokenSet, bool), TokenError> {
    match read(path) {
        Ok(set) => Ok((set, false)),
        Err(ReadError::Missing) => {
            create(path, mode)?;
            let set = read(path).map_err(|e| e.into_error(path))?;
            Ok((set, true))
        }
        Err(e) => Err(e.into_error(path)),
    }
}

/// Reads an existing token file.
pub fn load(path: &Path) -> Result<TokenSet, TokenError> {
    read(path).map_err(|e| e.into_error(path))
}

/// The file's identity now, or None if it cannot be looked at.
pub fn stamp_of(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        inode: m.ino(),
        len: m.len(),
    })
}

enum ReadError {
    Missing,
    Other(String),
}

impl ReadError {
    fn into_error(self, path: &Path) -> TokenError {
        let reason = match self {
            ReadError::Missing => "does not exist".to_string(),
            ReadError::Other(r) => r,
        };
        TokenError::File {
            path: path.to_path_buf(),
            reason,
        }
    }
}

fn read(path: &Path) -> Result<TokenSet, ReadError> {
    let stamp = stamp_of(path);
    let raw = match fs::read(path) {
        Ok(raw) => Zeroizing::new(raw),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) => {
            return Err(ReadError::Other(format!(
                "cannot be read ({e}); check that credvend's user may read it"
            )))
        }
    };
    // Trim defensively: a newline added by an editor or `echo` must not lock
    // every client out (F05).
    let trimmed = raw.trim_ascii();
    if trimmed.len() < 16 {
        return Err(ReadError::Other(
            "holds fewer than 16 characters; delete it to have credvend generate a token, \
             or write a longer one"
                .into(),
        ));
    }
    if trimmed.iter().any(|b| !(0x21..=0x7e).contains(b)) {
        return Err(ReadError::Other(
            "holds characters other than visible ASCII; SDKs reject tokens with spaces, \
             CR or LF: write a single-line token"
                .into(),
        ));
    }
    Ok(TokenSet {
        current: Zeroizing::new(trimmed.to_vec()),
        previous: None,
        padded: trimmed.len() != raw.len(),
        stamp: stamp.unwrap_or(FileStamp {
            modified: None,
            inode: 0,
            len: 0,
        }),
    })
}

/// Generates a token and writes it atomically: a temporary file in the same
/// directory with the final mode, then a rename. No trailing newline.
pub fn create(path: &Path, mode: u32) -> Result<(), TokenError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(bytes.as_mut());
    let token =
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref()));
    write_secret(path, token.as_bytes(), mode)
}

/// Writes a secret file atomically: a temporary file in the same directory
/// with the final mode, then a rename, so a reader never sees it half
/// written or with looser permissions.
pub fn write_secret(path: &Path, contents: &[u8], mode: u32) -> Result<(), TokenError> {
    let err = |reason: String| TokenError::File {
        path: path.to_path_buf(),
        reason,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|e| err(format!("its directory cannot be created ({e})")))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(format!(
            "cannot be written ({e}); give credvend write access to {}",
            dir.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("credvend-auth-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn created_file_is_0600_without_newline() {
        let d = tmpdir("create");
        let p = d.join("sub").join("token");
        let (set, created) = load_or_create(&p, 0o600).unwrap();
        assert!(created);
        let raw = fs::read(&p).unwrap();
        assert_eq!(raw.len(), 43);
        assert!(!raw.ends_with(b"\n"));
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(set.check(Some(&raw)), Check::Current);
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn checks_bearer_missing_wrong_and_trims_newline() {
        let d = tmpdir("check");
        let p = d.join("token");
        fs::write(&p, "abcdefghijklmnopqrstuvwxyz\n").unwrap();
        let set = load(&p).unwrap();
        assert_eq!(
            set.check(Some(b"abcdefghijklmnopqrstuvwxyz")),
            Check::Current
        );
        assert_eq!(
            set.check(Some(b"Bearer abcdefghijklmnopqrstuvwxyz")),
            Check::Bearer
        );
        assert_eq!(set.check(Some(b"abcdefghijklmnopqrstuvwxyZ")), Check::Wrong);
        assert_eq!(set.check(None), Check::Missing);
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn rotation_keeps_previous_for_grace_only() {
        let d = tmpdir("rotate");
        let p = d.join("token");
        fs::write(&p, "old-token-old-token-1234").unwrap();
        let old = load(&p).unwrap();
        fs::write(&p, "new-token-new-token-5678").unwrap();
        let set = old.rotated(load(&p).unwrap(), Duration::from_secs(60));
        assert_eq!(set.check(Some(b"new-token-new-token-5678")), Check::Current);
        assert_eq!(
            set.check(Some(b"old-token-old-token-1234")),
            Check::Previous
        );
        let expired = old.rotated(load(&p).unwrap(), Duration::ZERO);
        assert_eq!(
            expired.check(Some(b"old-token-old-token-1234")),
            Check::Wrong
        );
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn short_or_multiline_tokens_are_refused_without_echoing_them() {
        let d = tmpdir("bad");
        let p = d.join("token");
        fs::write(&p, "line-one-secret-aaaa\nline-two").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("single-line") && !e.contains("secret-aaaa"),
            "{e}"
        );
        fs::write(&p, "short").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("fewer than 16"));
        fs::remove_dir_all(&d).ok();
    }
}
