//! TLS for both clients of a deployed model, ureq's (`predict`, `eval`, `explain`) and hyper's
//! (`bench`): one rustls configuration (ring), trusting `--cacert` alone when given, else the
//! public roots.
//!
//! webpki refuses a server certificate marked as a CA (basicConstraints CA:TRUE, which
//! `openssl req -x509` writes by default) even when that very certificate is a trusted root:
//! "CaUsedAsEndEntity". curl accepts it, and a user who passed it with `--cacert` means it; so a
//! server's certificate that is byte for byte one given with `--cacert` is trusted for the names
//! it holds, its handshake signature still checked with its key. Nothing else is relaxed.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{WebPkiServerVerifier, verify_server_name};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, Error, RootCertStore,
    SignatureScheme, StreamOwned,
};
use ureq::tls::{Certificate, PemItem};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
    TransportAdapter,
};

/// The client configuration for `cacert` (PEM certificates), else the public roots.
pub fn client_config(cacert: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS")?;
    let config = match cacert {
        None => {
            let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots)
        }
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = read_certificates(path)?
                .iter()
                .map(|c| CertificateDer::from(c.der().to_vec()))
                .collect();
            let mut roots = RootCertStore::empty();
            for cert in &certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| anyhow!("--cacert {}: {e}", path.display()))?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow!("--cacert {}: {e}", path.display()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Given { webpki, certs }))
        }
    };
    Ok(Arc::new(config.with_no_client_auth()))
}

/// The certificates of a PEM file (`--cacert`).
pub fn read_certificates(path: &std::path::Path) -> Result<Vec<Certificate<'static>>> {
    let pem = crate::fsutil::read_regular(path, 16 << 20)
        .with_context(|| format!("--cacert {}", path.display()))?;
    let mut certs: Vec<Certificate<'static>> = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => bail!("{}: not a PEM certificate: {e}", path.display()),
        }
    }
    if certs.is_empty() {
        bail!("{}: holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// What to add to a TLS failure: what the user can do about it.
pub fn hint(cacert: Option<&Path>) -> String {
    match cacert {
        None => "for a server's own certificate, pass it with --cacert".to_string(),
        Some(path) => format!(
            "the server's certificate is neither in --cacert {} nor signed by one there, or does not name this host",
            path.display()
        ),
    }
}

/// webpki's verification, and the server's own certificate trusted when `--cacert` gave it.
#[derive(Debug)]
struct Given {
    webpki: Arc<WebPkiServerVerifier>,
    certs: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for Given {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verified {
            Err(Error::InvalidCertificate(CertificateError::Other(other)))
                if other.to_string() == "CaUsedAsEndEntity"
                    && self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// ureq's last connector: [`client_config`]'s TLS over the TCP connection, for https URLs (in
/// place of ureq's own, which takes no custom verifier).
#[derive(Debug)]
pub struct UreqTls(pub Arc<ClientConfig>);

impl<In: Transport> Connector<In> for UreqTls {
    type Out = Either<In, UreqTlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details.uri.host().unwrap_or_default();
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|_| ureq::Error::Tls("the host is not a TLS server name"))?
            .to_owned();
        let mut connection = ClientConnection::new(Arc::clone(&self.0), name)?;
        let mut socket = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        socket.set_timeout(details.timeout);
        connection.complete_io(&mut socket)?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(UreqTlsTransport {
            buffers,
            stream: StreamOwned::new(connection, socket),
        })))
    }
}

/// One TLS connection for ureq.
pub struct UreqTlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl std::fmt::Debug for UreqTlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UreqTlsTransport").finish_non_exhaustive()
    }
}

impl Transport for UreqTlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        self.stream.write_all(&self.buffers.output()[..amount])?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let amount = self.stream.read(self.buffers.input_append_buf())?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}
