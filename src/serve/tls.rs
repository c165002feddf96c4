//! HTTPS: TLS (rustls) in front of the same router, as an axum [`Listener`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const READY_CONNECTIONS: usize = 256;

/// The largest PEM file read: a long certificate chain is tens of kilobytes; the bound keeps a
/// path such as /dev/zero from being read without end.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The server's TLS configuration from a PEM certificate chain and a PEM private key.
pub fn load_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let cert_pem = crate::fsutil::read_regular(cert, MAX_PEM_BYTES)
        .with_context(|| format!("{}: cannot read the certificate", cert.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        bail!(
            "{}: no certificate in it (expected PEM `BEGIN CERTIFICATE`)",
            cert.display()
        );
    }
    let key_pem = crate::fsutil::read_regular(key, MAX_PEM_BYTES)
        .with_context(|| format!("{}: cannot read the private key", key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{}: not a PEM private key", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup failed")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| format!("{}: the key does not fit the certificate", cert.display()))?;
    Ok(Arc::new(config))
}

/// Accepts TCP connections and hands out those whose TLS handshake succeeded.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`; must be called inside the tokio runtime.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (send, ready) = mpsc::channel(READY_CONNECTIONS);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = tcp.accept().await else {
                    // Out of file descriptors and the like: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // An answer goes out in several writes (TLS records, HTTP/2 frames): without
                // this, Nagle's algorithm holds the last one until the client's delayed ACK.
                let _ = stream.set_nodelay(true);
                // Each handshake runs on its own task, so a slow or silent client delays no one.
                let acceptor = acceptor.clone();
                let ready = send.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        let _ = ready.send((tls, peer)).await;
                    }
                });
                if send.is_closed() {
                    break;
                }
            }
        });
        Ok(Self { ready, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Some(connection) = self.ready.recv().await {
                return connection;
            }
            // The accepting task only ends once the server stopped listening.
            std::future::pending::<()>().await;
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // /dev/zero is only ever opened for its type here; reading it to the end never ended.
    #[cfg(unix)]
    #[test]
    fn pem_files_that_are_not_regular_files_are_refused() {
        let err = load_config(Path::new("/dev/zero"), Path::new("/dev/zero")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with("/dev/zero: cannot read the certificate"),
            "{msg}"
        );
        assert!(msg.contains("not a regular file"), "{msg}");
    }
}
