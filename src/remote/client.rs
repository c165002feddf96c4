//! HTTP to a deployed model: one keep-alive agent (ureq, rustls), the API key on every request,
//! a deadline per request, and every failure turned into one line that names the URL.

use std::io::ErrorKind;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{Connector as _, TcpConnector};

use super::config::RemoteConfig;
use super::tls::UreqTls;
use super::url::ServerUrl;
use crate::protocol::names::HEADER_LENGTH;
use crate::terminal::one_line;

/// The largest answer read (here and by `maas bench`): an infer answer of 256 images is a few
/// KiB, an explanation's picture tens of KiB; anything near this is not the protocol.
pub const MAX_ANSWER_BYTES: u64 = 64 << 20;
/// The most characters of a server's own words (its error message, what was wrong with its
/// answer) kept in an error line.
const MAX_SAID: usize = 300;

/// A server's answer that is not a transport failure (any status).
#[derive(Debug)]
pub struct Answer {
    /// The URL asked.
    pub url: String,
    /// The HTTP status.
    pub status: u16,
    /// `Inference-Header-Content-Length`, when the answer has one.
    pub header_length: Option<usize>,
    /// `Content-Type`.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
}

/// A client for one server.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// `Authorization`, when there is an API key.
    authorization: Option<String>,
    timeout: Duration,
    /// What to do about a TLS failure.
    tls_hint: String,
}

impl Client {
    /// A client for `config.url`, trusting `config.cacert` when given.
    pub fn new(config: &RemoteConfig) -> Result<Self> {
        let base = ServerUrl::parse(&config.url)?.base;
        let agent_config = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .user_agent(concat!("maas/", env!("CARGO_PKG_VERSION")))
            // Straight to the URL: ureq 3 would otherwise take a proxy from the environment.
            .proxy(None)
            // A 4xx/5xx is an answer like any other, explained below with its body.
            .http_status_as_error(false)
            .build();
        // TCP, then TLS as `bench` has it (super::tls), for https URLs.
        let tls = super::tls::client_config(config.cacert.as_deref())?;
        let connector = ().chain(TcpConnector::default()).chain(UreqTls(tls));
        let agent = ureq::Agent::with_parts(agent_config, connector, DefaultResolver::default());
        Ok(Self {
            agent,
            base,
            authorization: config.authorization(),
            timeout: config.timeout,
            tls_hint: super::tls::hint(config.cacert.as_deref()),
        })
    }

    /// The server's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET base + path`.
    pub fn get(&self, path: &str) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url);
        if let Some(value) = &self.authorization {
            request = request.header("Authorization", value);
        }
        self.answer(url, request.call())
    }

    /// `POST base + path` with `body`, its content type and more headers.
    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.post(&url).header("Content-Type", content_type);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(value) = &self.authorization {
            request = request.header("Authorization", value);
        }
        self.answer(url, request.send(body))
    }

    /// Reads a response, or says why there is none.
    fn answer(
        &self,
        url: String,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Answer> {
        let mut response = response.map_err(|e| self.transport(&url, e))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let header_length = match header(HEADER_LENGTH) {
            None => None,
            Some(v) => Some(v.trim().parse::<usize>().map_err(|_| {
                anyhow!(
                    "{url}: the answer is not the protocol: Inference-Header-Content-Length {:?}",
                    one_line(&v, MAX_SAID)
                )
            })?),
        };
        let content_type = header("content-type").unwrap_or_default();
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport(&url, e))?;
        Ok(Answer {
            url,
            status,
            header_length,
            content_type,
            body,
        })
    }

    /// One line for a request that got no answer.
    fn transport(&self, url: &str, error: ureq::Error) -> anyhow::Error {
        let tls_hint = &self.tls_hint;
        let problem = match &error {
            ureq::Error::HostNotFound => "host not found (the name does not resolve)".to_string(),
            ureq::Error::Timeout(_) => {
                format!("no answer within --timeout-ms {}", self.timeout.as_millis())
            }
            ureq::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => {
                "connection refused: is the server running, on that port?".to_string()
            }
            ureq::Error::Io(io)
                if io.kind() == ErrorKind::InvalidData && url.starts_with("https") =>
            {
                format!("TLS failed: {io} ({tls_hint})")
            }
            // The system resolver's failure comes as a plain I/O error.
            ureq::Error::Io(io) if io.to_string().contains("lookup address") => {
                format!("host not found (the name does not resolve: {io})")
            }
            ureq::Error::Io(io) => format!("cannot reach the server: {io}"),
            ureq::Error::ConnectionFailed => "cannot connect to the server".to_string(),
            ureq::Error::Tls(e) => format!("TLS failed: {e} ({tls_hint})"),
            ureq::Error::Rustls(e) => format!("TLS failed: {e} ({tls_hint})"),
            ureq::Error::BadUri(e) => format!("not a URL: {e}"),
            ureq::Error::Protocol(e) => format!("the answer is not HTTP: {e}"),
            ureq::Error::BodyExceedsLimit(n) => format!("the answer is larger than {n} bytes"),
            other => other.to_string(),
        };
        // ureq's words can quote the server's bytes (the hint is ours, kept whole).
        anyhow!("{url}: {}", one_line(&problem, MAX_SAID + tls_hint.len()))
    }
}

impl Answer {
    /// The answer when it is a success; otherwise one line saying what the status means.
    pub fn ok(self, had_key: bool) -> Result<Self> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let said = self.message();
        let url = &self.url;
        let status = self.status;
        let problem = match status {
            401 | 403 if had_key => "the server refused the API key".to_string(),
            401 | 403 => "the server wants an API key (--api-key, --api-key-file or MAAS_API_KEY)"
                .to_string(),
            404 => "not found: no such model or version on this server".to_string(),
            413 => "the request is too large for the server".to_string(),
            500..=599 => "the server failed".to_string(),
            _ => "the server refused the request".to_string(),
        };
        match said {
            Some(said) => bail!("{url}: {problem} (HTTP {status}: {said})"),
            None => bail!("{url}: {problem} (HTTP {status})"),
        }
    }

    /// The server's own words: `{"error": MESSAGE}`, else the start of a text body, on one line,
    /// shortened and with control characters escaped (they would act on the terminal).
    fn message(&self) -> Option<String> {
        let json = serde_json::from_slice::<serde_json::Value>(&self.body).ok();
        let said = match json.as_ref().and_then(|v| v.get("error")?.as_str()) {
            Some(said) => said,
            None => std::str::from_utf8(&self.body).ok()?,
        };
        let line = one_line(said, MAX_SAID);
        (!line.is_empty()).then_some(line)
    }

    /// The body as JSON of type `T`, or a line saying the answer is not the protocol.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| self.not_protocol(e))
    }

    /// A line saying that the answer is not what the protocol says.
    pub fn not_protocol(&self, why: impl std::fmt::Display) -> anyhow::Error {
        // `why` can quote the answer (serde's errors do).
        anyhow!(
            "{}: the answer is not the Open Inference Protocol: {}",
            self.url,
            one_line(&why.to_string(), MAX_SAID)
        )
    }
}
