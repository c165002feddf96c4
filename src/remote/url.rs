//! The server's URL (`--url`), read once for both clients, ureq's (`predict`, `eval`, `explain`)
//! and hyper's (`bench`): one parser, one set of messages.

use anyhow::{Result, anyhow, bail};
use hyper::Uri;

/// A server's base URL, checked: `http://` or `https://`, with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// The URL as given, without a trailing slash: what paths are appended to.
    pub base: String,
    /// Whether it is `https://`.
    pub https: bool,
    /// The host, without the brackets of an IPv6 address: the TLS server name.
    pub host: String,
    /// The port, the scheme's when the URL has none.
    pub port: u16,
    /// `host[:port]` as written: the `Host` header.
    pub authority: String,
}

impl ServerUrl {
    /// Reads `url`; the error names it and says what is wrong.
    pub fn parse(url: &str) -> Result<Self> {
        let base = url.trim_end_matches('/');
        let uri: Uri = base.parse().map_err(|e| anyhow!("{url}: not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("{url}: not an http:// or https:// URL"),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow!("{url}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map_or_else(|| host.clone(), |a| a.to_string());
        Ok(Self {
            base: base.to_string(),
            https,
            host,
            port,
            authority,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_https_urls_give_host_port_and_base() {
        let url = ServerUrl::parse("https://[::1]:8443/").unwrap();
        assert_eq!(
            url,
            ServerUrl {
                base: "https://[::1]:8443".into(),
                https: true,
                host: "::1".into(),
                port: 8443,
                authority: "[::1]:8443".into(),
            }
        );
        let url = ServerUrl::parse("http://models.example/prefix").unwrap();
        assert_eq!((url.port, url.https), (80, false));
        assert_eq!(url.base, "http://models.example/prefix");
        assert_eq!(ServerUrl::parse("https://x").unwrap().port, 443);
    }

    #[test]
    fn other_urls_are_refused_with_the_reason() {
        for (url, reason) in [
            ("ftp://example", "not an http:// or https:// URL"),
            ("example:8080", "not an http:// or https:// URL"),
            ("localhost", "not an http:// or https:// URL"),
            ("http://exa mple", "not a URL"),
            ("", "not a URL"),
        ] {
            let e = ServerUrl::parse(url).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{url}: ")) && e.contains(reason),
                "{url}: {e}"
            );
        }
    }
}
