//! Certificates: a chain and key read from PEM files, or a throwaway CA and
//! a leaf signed by it, made with rcgen when the server starts.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::TlsError;

/// Every certificate in a PEM file, in order: a leaf and its chain, or
/// trusted roots.
pub(crate) fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoPem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(chain)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPem {
            path: path.to_path_buf(),
            what: "private key",
        },
        other => TlsError::BadPem {
            path: path.to_path_buf(),
            problem: other.to_string(),
        },
    })
}

/// PEM files are small; a bigger one is not what the user meant.
const MAX_PEM: u64 = 1024 * 1024;

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    let too_big = |size| TlsError::BadPem {
        path: path.to_path_buf(),
        problem: format!("{size} bytes is too large for a PEM file"),
    };
    let metadata = std::fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if metadata.len() > MAX_PEM {
        return Err(too_big(metadata.len()));
    }
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A throwaway CA and a leaf it signed.
pub(crate) struct Throwaway {
    pub(crate) ca_pem: String,
    pub(crate) ca: CertificateDer<'static>,
    pub(crate) leaf: CertificateDer<'static>,
    pub(crate) key: PrivateKeyDer<'static>,
}

/// A CA made for this run, and a leaf for `localhost`, `127.0.0.1`, `::1`
/// and `sans`: a client trusts the CA (`--tls-ca-out`), never the leaf
/// itself, as with a real deployment.
pub(crate) fn throwaway(sans: &[String]) -> Result<Throwaway, TlsError> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tcpscript throwaway CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    names.extend(sans.iter().cloned());
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok(Throwaway {
        ca_pem: ca_cert.pem(),
        ca: ca_cert.der().clone(),
        leaf: leaf_cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
    })
}

/// The SHA-256 fingerprint of a certificate, as `openssl x509 -fingerprint
/// -sha256` prints it: upper-case hex pairs joined by `:`.
pub(crate) fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
