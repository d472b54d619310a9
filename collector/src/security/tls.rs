//! Server TLS (rustls, ring provider): the certificate, key and optional
//! client CA read from PEM files, one rustls config per listener (ALPN `h2`
//! for gRPC, `http/1.1` for HTTP), swapped whole on [`ServerTls::reload`]
//! (SIGHUP). A connection uses the config current when it was accepted;
//! open connections keep theirs.

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The PEM files of the server's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA whose certificates clients must present on gRPC ingest (mutual
    /// TLS); `None`: no client certificate asked for.
    pub client_ca: Option<PathBuf>,
}

/// Which listener a config is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// gRPC ingest: HTTP/2, client certificates when `client_ca` is set.
    Ingest,
    /// `/metrics`, the API and the page: HTTP/1.1, server authentication
    /// only (scrapers and browsers authenticate with tokens).
    Http,
}

struct Configs {
    ingest: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// The reloadable server TLS of both listeners.
pub struct ServerTls {
    files: TlsFiles,
    current: parking_lot::RwLock<Configs>,
}

impl ServerTls {
    /// Reads and checks the files; an error names the file at fault.
    pub fn load(files: TlsFiles) -> Result<ServerTls, String> {
        let configs = build(&files)?;
        Ok(ServerTls { files, current: parking_lot::RwLock::new(configs) })
    }

    /// Reads the files again; on an error the old certificates stay.
    pub fn reload(&self) -> Result<(), String> {
        let configs = build(&self.files)?;
        *self.current.write() = configs;
        Ok(())
    }

    /// The acceptor for a connection accepted now on `listener`.
    pub fn acceptor(&self, listener: Listener) -> tokio_rustls::TlsAcceptor {
        let current = self.current.read();
        tokio_rustls::TlsAcceptor::from(match listener {
            Listener::Ingest => current.ingest.clone(),
            Listener::Http => current.http.clone(),
        })
    }

    /// The files.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// The crypto provider of every TLS config shoal builds: explicit, so that
/// no other crate's choice of a process default matters.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting the system's roots, the Mozilla roots and
/// `ca_file` (a private CA), for remote-write targets.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Unreadable system certificates are skipped (the Mozilla roots remain).
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| format!("TLS CA {}: {e}", path.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn build(files: &TlsFiles) -> Result<Configs, String> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| format!("TLS key {}: {e}", files.key.display()))?;
    let client_verifier = match &files.client_ca {
        None => None,
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| format!("TLS client CA {}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("TLS client CA {}: {e}", path.display()))?;
            Some(verifier)
        }
    };
    let config = |alpn: &[u8], client_auth: bool| -> Result<Arc<ServerConfig>, String> {
        let builder =
            ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(|e| format!("TLS: {e}"))?;
        let builder = match (&client_verifier, client_auth) {
            (Some(v), true) => builder.with_client_cert_verifier(v.clone()),
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("TLS certificate {} with key {}: {e}", files.cert.display(), files.key.display()))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    };
    Ok(Configs { ingest: config(b"h2", true)?, http: config(b"http/1.1", false)? })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("TLS certificate {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TLS certificate {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("TLS certificate {}: no PEM certificate in the file", path.display()));
    }
    Ok(certs)
}

/// Why a TLS handshake failed, as the `reason` label.
pub fn handshake_failure(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match error.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => "no_client_certificate",
        Some(Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })) => {
            "client_certificate_expired"
        }
        Some(Error::InvalidCertificate(_)) => "bad_client_certificate",
        // The client refused us: most often our certificate is not signed
        // by the CA it trusts, or names another host.
        Some(Error::AlertReceived(_)) => "refused_by_client",
        Some(Error::NoApplicationProtocol) => "no_common_protocol",
        Some(_) => "protocol_error",
        None if error.kind() == std::io::ErrorKind::UnexpectedEof => "closed_by_client",
        None => "io_error",
    }
}

/// Every reason [`handshake_failure`] and the listener give, plus
/// `plaintext` (a client that spoke plain HTTP to a TLS port) and `timeout`.
pub const HANDSHAKE_FAILURES: [&str; 10] = [
    "plaintext",
    "timeout",
    "no_client_certificate",
    "client_certificate_expired",
    "bad_client_certificate",
    "refused_by_client",
    "no_common_protocol",
    "protocol_error",
    "closed_by_client",
    "io_error",
];
