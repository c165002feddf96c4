//! API keys: who may call the protected routes.
//!
//! Keys are compared in constant time so that response timing does not reveal how much of a
//! guessed key was right, and they are never printed: errors name the file, not its contents.

use std::path::Path;

use anyhow::{Context, Result, bail};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConstantTimeEq};

use super::body::refuse;
use super::error::ApiError;

/// The largest key file read: far beyond any list of keys, and a bound on what a path such as
/// /dev/zero could make the server read.
const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

/// The accepted keys; a request must present one of them.
#[derive(Clone)]
pub struct Keys(Vec<Vec<u8>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} redacted)", self.0.len())
    }
}

impl Keys {
    /// The keys from `--api-key` and `--api-key-file`; `None` when neither is given (no auth).
    pub fn from_args(key: Option<&str>, file: Option<&Path>) -> Result<Option<Self>> {
        let mut keys = Vec::new();
        if let Some(key) = key {
            let key = key.trim();
            if key.is_empty() {
                bail!("--api-key is empty; give a key, or leave the flag out to serve without one");
            }
            keys.push(key.as_bytes().to_vec());
        }
        if let Some(path) = file {
            let text = crate::fsutil::read_regular(path, MAX_KEY_FILE_BYTES)
                .and_then(|bytes| String::from_utf8(bytes).context("not UTF-8 text"))
                .with_context(|| format!("--api-key-file {}", path.display()))?;
            let before = keys.len();
            keys.extend(parse_key_file(&text));
            if keys.len() == before {
                bail!(
                    "--api-key-file {}: holds no key (one per line; blank lines and # comments are ignored)",
                    path.display()
                );
            }
        }
        Ok(if keys.is_empty() {
            None
        } else {
            Some(Self(keys))
        })
    }

    /// Whether an `Authorization` header value carries one of the keys.
    pub fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        self.accepts_value(authorization.map(HeaderValue::as_bytes))
    }

    /// Whether an `Authorization` value (an HTTP header, gRPC metadata) carries one of the keys.
    pub fn accepts_value(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = authorization.and_then(bearer_token) else {
            return false;
        };
        // Every key is compared, so the time taken does not tell which one matched.
        let found = self.0.iter().fold(Choice::from(0), |found, key| {
            found | key.as_slice().ct_eq(token)
        });
        found.into()
    }

    /// The key of `--admin-key`; `None` when not given (the repository routes then answer 403).
    pub fn admin(key: Option<&str>) -> Result<Option<Self>> {
        match key.map(str::trim) {
            None => Ok(None),
            Some("") => bail!(
                "--admin-key is empty; give a key, or leave the flag out to turn the repository routes off"
            ),
            Some(key) => Ok(Some(Self(vec![key.as_bytes().to_vec()]))),
        }
    }
}

/// Whether a request may change what is served: 403 when the server has no admin key (the
/// repository routes are off), 401 when the request does not carry it.
pub fn check_admin(admin: Option<&Keys>, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let authorization = headers.get(axum::http::header::AUTHORIZATION);
    check_admin_value(admin, authorization.map(HeaderValue::as_bytes))
}

/// [`check_admin`] on the value of `Authorization` (an HTTP header, gRPC metadata).
pub fn check_admin_value(
    admin: Option<&Keys>,
    authorization: Option<&[u8]>,
) -> Result<(), ApiError> {
    let Some(admin) = admin else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the repository routes are off: start the server with --admin-key (MAAS_ADMIN_KEY) to use them",
        ));
    };
    if admin.accepts_value(authorization) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong admin key: send the header `Authorization: Bearer ADMIN_KEY`",
    ))
}

/// Keys in a file: one per line; blank lines and lines starting with `#` are not keys.
fn parse_key_file(text: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
}

/// The token of `Bearer TOKEN` (the scheme is case-insensitive, RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    Some(value[SCHEME.len()..].trim_ascii())
}

/// Middleware: 401 unless the request carries an accepted key.
pub async fn require_key(State(keys): State<Keys>, request: Request, next: Next) -> Response {
    if keys.accepts(request.headers().get(axum::http::header::AUTHORIZATION)) {
        return next.run(request).await;
    }
    let error = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key: send the header `Authorization: Bearer KEY`",
    );
    refuse(request, error).await.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Keys {
        Keys(list.iter().map(|k| k.as_bytes().to_vec()).collect())
    }

    // /dev/zero is only ever opened for its type here; reading it to the end never ended.
    #[cfg(unix)]
    #[test]
    fn a_key_file_that_is_not_a_regular_file_is_refused() {
        let err = Keys::from_args(None, Some(Path::new("/dev/zero"))).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.starts_with("--api-key-file /dev/zero: "), "{msg}");
        assert!(msg.contains("not a regular file"), "{msg}");
    }

    #[test]
    fn equality_is_exact() {
        assert!(keys(&["secret"]).accepts(Some(&HeaderValue::from_static("Bearer secret"))));
        for other in ["secreT", "secre", "secrets", "ecret"] {
            let header = HeaderValue::from_str(&format!("Bearer {other}")).unwrap();
            assert!(!keys(&["secret"]).accepts(Some(&header)), "{other}");
        }
    }

    #[test]
    fn only_bearer_with_a_listed_key_is_accepted() {
        let k = keys(&["alpha", "beta"]);
        let header = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(k.accepts(Some(&header("Bearer alpha"))));
        assert!(k.accepts(Some(&header("bearer beta"))));
        assert!(!k.accepts(Some(&header("Bearer gamma"))));
        assert!(!k.accepts(Some(&header("Basic alpha"))));
        assert!(!k.accepts(Some(&header("Bearer "))));
        assert!(!k.accepts(Some(&header("alpha"))));
        assert!(!k.accepts(None));
    }

    #[test]
    fn key_file_skips_blanks_and_comments() {
        let parsed: Vec<_> = parse_key_file("# team keys\n\n  one  \n#two\nthree\r\n").collect();
        assert_eq!(parsed, [b"one".to_vec(), b"three".to_vec()]);
    }

    #[test]
    fn empty_key_file_and_empty_key_are_errors_that_do_not_echo_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# nothing\n\n").unwrap();
        assert!(Keys::from_args(None, Some(&path)).is_err());
        assert!(Keys::from_args(Some("  "), None).is_err());
        assert!(Keys::from_args(None, None).unwrap().is_none());
        std::fs::write(&path, "k1\n").unwrap();
        let both = Keys::from_args(Some("k0"), Some(&path)).unwrap().unwrap();
        assert_eq!(format!("{both:?}"), "Keys(2 redacted)");
    }
}
