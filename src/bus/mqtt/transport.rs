//! The byte stream under MQTT: TCP, or TLS over TCP (rustls, ring), with the CA
//! from `mqtt.ca_file` or the webpki roots.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::bus::BusError;

/// Where and how to connect; built once from the settings.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Endpoint {
    pub fn new(host: &str, port: u16, tls: bool, ca_file: Option<&Path>) -> Result<Self, BusError> {
        let tls = if tls {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| BusError::Tls(format!("server name {host}: {e}")))?;
            Some((TlsConnector::from(Arc::new(tls_config(ca_file)?)), name))
        } else {
            None
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    pub async fn connect(&self) -> std::io::Result<Transport> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Transport::Plain(tcp)),
            Some((connector, name)) => Ok(Transport::Tls(Box::new(
                connector.connect(name.clone(), tcp).await?,
            ))),
        }
    }
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, BusError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .map_err(|e| BusError::Tls(format!("{}: {e}", path.display())))?;
            for certificate in certificates {
                let certificate =
                    certificate.map_err(|e| BusError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(certificate)
                    .map_err(|e| BusError::Tls(format!("{}: {e}", path.display())))?;
            }
            // Else every handshake would fail later with an unknown issuer, far
            // from the cause.
            if roots.is_empty() {
                return Err(BusError::Tls(format!(
                    "{}: no PEM certificate in the file",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| BusError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let error = Endpoint::new("broker", 8883, true, Some(&path))
            .err()
            .expect("refused");
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }
}
