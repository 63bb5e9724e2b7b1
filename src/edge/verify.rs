//! Verification the way the old docs told people to do it with curl: a real TLS handshake to a
//! node with SNI, reading the leaf it serves. The handshake's signature is checked for real (so
//! the node proves it holds the key); the chain is not judged here, the fingerprint is.

use std::{sync::Arc, time::Duration};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Accepts whichever certificate the node presents (we compare its fingerprint afterwards) but
/// verifies the handshake signature with it.
#[derive(Debug)]
struct FingerprintOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for FingerprintOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a node served for one SNI name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub fingerprint_sha256: String,
    /// Every certificate sent, leaf first, as SHA-256 fingerprints.
    pub chain: Vec<String>,
}

pub fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FingerprintOnly(provider)))
            .with_no_client_auth(),
    )
}

/// Connects to `address` and completes a TLS handshake with SNI `hostname`.
pub async fn handshake(address: &str, hostname: &str) -> Result<Served, String> {
    let name = ServerName::try_from(hostname.to_string())
        .map_err(|e| format!("bad SNI name {hostname}: {e}"))?;
    let connect = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        let tls = TlsConnector::from(client_config())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {address} for {hostname} failed: {e}"))?;
        let (_, session) = tls.get_ref();
        let certs = session
            .peer_certificates()
            .ok_or_else(|| format!("{address} sent no certificate for {hostname}"))?;
        let chain: Vec<String> = certs
            .iter()
            .map(|c| hex::encode(Sha256::digest(c.as_ref())))
            .collect();
        Ok(Served {
            fingerprint_sha256: chain[0].clone(),
            chain,
        })
    };
    tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| format!("no TLS answer from {address} for {hostname} within 5 s"))?
}

/// The SNI name to check for an app domain: a wildcard domain is checked with one label.
pub fn sni_for(domain: &str) -> String {
    match domain.strip_prefix("*.") {
        Some(rest) => format!("certdrop-verify.{rest}"),
        None => domain.to_string(),
    }
}
