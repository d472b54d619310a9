//! Certificates generated at test time (rcgen; nothing checked in): a CA,
//! a server certificate for 127.0.0.1 and localhost, a client certificate,
//! expired ones of each, and a second CA that signed none of them.

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// PEM files in a directory.
pub struct Pki {
    /// The CA that signed the certificates below.
    pub ca: PathBuf,
    /// Another CA (a client trusting it refuses our server).
    pub other_ca: PathBuf,
    /// Server certificate (127.0.0.1, ::1, localhost) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Server certificate that expired in 2021.
    pub expired_server_cert: PathBuf,
    pub expired_server_key: PathBuf,
    /// Client certificate (mutual TLS) and key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Client certificate that expired in 2021.
    pub expired_client_cert: PathBuf,
    pub expired_client_key: PathBuf,
    /// A client certificate signed by `other_ca`.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

fn leaf(issuer: &Issuer<'_, KeyPair>, server: bool, expired: bool) -> (String, String) {
    let names: Vec<String> = if server { vec!["localhost".into()] } else { vec![] };
    let mut params = CertificateParams::new(names).unwrap();
    if server {
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.subject_alt_names.push(SanType::IpAddress("::1".parse().unwrap()));
    }
    params.distinguished_name.push(DnType::CommonName, if server { "shoal-collector" } else { "shoal-sdk" });
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
    if expired {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
    } else {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Generates everything into `dir`.
    pub fn generate(dir: &Path) -> Pki {
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let (ca_params, ca_key, ca_pem) = ca("shoal test CA");
        let (other_params, other_key, other_pem) = ca("some other CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let other = Issuer::new(other_params, other_key);
        let pair = |issuer: &Issuer<'_, KeyPair>, server, expired, name: &str| {
            let (cert, key) = leaf(issuer, server, expired);
            (write(&format!("{name}.crt"), &cert), write(&format!("{name}.key"), &key))
        };
        let (server_cert, server_key) = pair(&issuer, true, false, "server");
        let (expired_server_cert, expired_server_key) = pair(&issuer, true, true, "expired-server");
        let (client_cert, client_key) = pair(&issuer, false, false, "client");
        let (expired_client_cert, expired_client_key) = pair(&issuer, false, true, "expired-client");
        let (stranger_cert, stranger_key) = pair(&other, false, false, "stranger");
        Pki {
            ca: write("ca.crt", &ca_pem),
            other_ca: write("other-ca.crt", &other_pem),
            server_cert,
            server_key,
            expired_server_cert,
            expired_server_key,
            client_cert,
            client_key,
            expired_client_cert,
            expired_client_key,
            stranger_cert,
            stranger_key,
        }
    }
}
