//! TLS for every role, on rustls: the configurations each command builds
//! from its flags, certificates from PEM files or made on the spot, and
//! handshake failures told in one line.
//!
//! The crypto provider is `ring`, installed explicitly before any
//! configuration is built (rustls panics when it has to guess between
//! providers). `ring` rather than `aws-lc-rs`: the latter builds its C
//! library with cmake, minutes more on a 2-core machine, for speed that
//! loopback tests do not need.

pub(crate) mod blocking; // TLS over a blocking socket: the client, and manual mode both ways
pub(crate) mod certs; // PEM files in, a throwaway CA and leaf made with rcgen
mod failure; // a rustls error as the one line a user needs
pub(crate) mod info; // `tls_info()`: what was negotiated, and the peer's certificate
mod x509; // the peer certificate's subject, SANs and expiry, read for `tls_info()`

use std::path::PathBuf;
use std::sync::{Arc, Once};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use thiserror::Error;

pub(crate) use failure::{describe, describe_io};

/// Why TLS could not be set up: before any connection, so a usage error.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` holds no PEM {what}")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("`{path}`: {problem}")]
    BadPem { path: PathBuf, problem: String },
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a throwaway certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("--tls-client-ca: {0}")]
    ClientCa(String),
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    #[error("{0}")]
    Usage(String),
}

/// The server side's flags.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerTls {
    /// `--tls-cert` and `--tls-key`; `None`: a throwaway CA and leaf.
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
    /// `--tls-san`: names the throwaway leaf is also for.
    pub(crate) sans: Vec<String>,
    /// `--tls-ca-out`: where to write the throwaway CA.
    pub(crate) ca_out: Option<PathBuf>,
    /// `--tls-client-ca`: require client certificates signed by these.
    pub(crate) client_ca: Option<PathBuf>,
    pub(crate) alpn: Vec<String>,
}

/// The client side's flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ClientTls {
    /// `--tls-ca`: trusted besides the system's roots.
    pub(crate) ca: Vec<PathBuf>,
    /// `--insecure`: no verification at all.
    pub(crate) insecure: bool,
    /// `--tls-servername`: the name to verify (and send as SNI).
    pub(crate) servername: Option<String>,
    pub(crate) alpn: Vec<String>,
    /// `--tls-cert` and `--tls-key`: a client certificate.
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
    /// CAs trusted besides those, made in this process: `test --server S
    /// --tls` trusts its own server's throwaway CA without a flag.
    pub(crate) trusted: Vec<CertificateDer<'static>>,
}

/// Installs the crypto provider once per process, before any config.
pub(crate) fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Another provider already installed (by a test harness) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Says on stderr that certificates go unverified, once per process
/// however many connections skip verification: `asked_by` names the flag
/// or option that asked.
pub(crate) fn warn_insecure(asked_by: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        crate::console::err(&format!(
            "warning: {asked_by}: the server's certificate is not verified; anyone in the middle can read and change this conversation"
        ));
    });
}

/// A server's configuration, and the SHA-256 fingerprint of its leaf.
#[derive(Debug, Clone)]
pub(crate) struct ServerSetup {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) fingerprint: String,
    /// The throwaway CA that signed the leaf; `None` with `--tls-cert`.
    pub(crate) ca: Option<CertificateDer<'static>>,
}

pub(crate) fn server_config(options: &ServerTls) -> Result<ServerSetup, TlsError> {
    install_provider();
    let mut ca = None;
    let (chain, key) = match &options.identity {
        Some((cert, key)) => (certs::load_chain(cert)?, certs::load_key(key)?),
        None => {
            let made = certs::throwaway(&options.sans)?;
            if let Some(path) = &options.ca_out {
                std::fs::write(path, &made.ca_pem).map_err(|source| TlsError::Write {
                    path: path.clone(),
                    source,
                })?;
            }
            ca = Some(made.ca);
            (vec![made.leaf], made.key)
        }
    };
    let fingerprint = certs::fingerprint(&chain[0]);
    let builder = ServerConfig::builder();
    let builder = match &options.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certs::load_chain(path)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(ServerSetup {
        config: Arc::new(config),
        fingerprint,
        ca,
    })
}

pub(crate) fn client_config(options: &ClientTls) -> Result<Arc<ClientConfig>, TlsError> {
    install_provider();
    let builder = if options.insecure {
        ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification))
    } else {
        let mut roots = RootCertStore::empty();
        // A system without roots (a bare container) still verifies
        // against --tls-ca; unreadable ones are skipped, as browsers do.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        for path in &options.ca {
            for cert in certs::load_chain(path)? {
                roots.add(cert).map_err(|e| TlsError::BadPem {
                    path: path.clone(),
                    problem: e.to_string(),
                })?;
            }
        }
        for cert in &options.trusted {
            roots.add(cert.clone())?;
        }
        ClientConfig::builder().with_root_certificates(roots)
    };
    let mut config = match &options.identity {
        Some((cert, key)) => {
            builder.with_client_auth_cert(certs::load_chain(cert)?, certs::load_key(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name to verify the server against: `--tls-servername`, else the
/// host of `addr`. An IP address is verified against the certificate's IP
/// SANs, and rustls then sends no SNI, as RFC 6066 asks.
pub(crate) fn server_name(
    options: &ClientTls,
    addr: &str,
) -> Result<ServerName<'static>, TlsError> {
    let host = match &options.servername {
        Some(name) => name.as_str(),
        None => host_of(addr),
    };
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.to_string()))
}

/// `host` of `host:port`, `[::1]:port` or a bare host; a bare port is
/// 127.0.0.1's, as `net::resolve` takes it.
fn host_of(addr: &str) -> &str {
    if addr.parse::<u16>().is_ok() {
        return "127.0.0.1";
    }
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => addr,
    }
}

/// `--insecure`: every certificate accepted, signatures still checked
/// for form so the handshake completes as it would otherwise.
#[derive(Debug)]
struct NoVerification;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
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
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshake in memory; the first side's error, if any.
    fn handshake(
        client: &ClientTls,
        server: &ServerTls,
        name: &str,
    ) -> Result<(rustls::ClientConnection, rustls::ServerConnection), rustls::Error> {
        let server = server_config(server).unwrap();
        let mut s = rustls::ServerConnection::new(server.config).unwrap();
        let mut c = rustls::ClientConnection::new(
            client_config(client).unwrap(),
            server_name(client, name).unwrap(),
        )
        .unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut &wire[..]).unwrap();
            let server_side = s.process_new_packets().map(|_| ());
            wire.clear();
            s.write_tls(&mut wire).unwrap();
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets()?;
            server_side?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok((c, s));
            }
        }
        panic!("the handshake never ended");
    }

    fn ca_file(dir: &tempfile::TempDir) -> (ServerTls, ClientTls) {
        let ca = dir.path().join("ca.pem");
        let server = ServerTls {
            ca_out: Some(ca.clone()),
            alpn: vec!["h2".into(), "http/1.1".into()],
            ..ServerTls::default()
        };
        let client = ClientTls {
            ca: vec![ca],
            alpn: vec!["http/1.1".into()],
            ..ClientTls::default()
        };
        (server, client)
    }

    #[test]
    fn a_client_trusting_the_throwaway_ca_verifies_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = ca_file(&dir);
        // The CA file is written when the server's config is built.
        let setup = server_config(&server).unwrap();
        assert_eq!(setup.fingerprint.len(), 32 * 3 - 1);
        for name in ["127.0.0.1:1", "localhost:1", "[::1]:1"] {
            let (c, _) = handshake(&client, &server, name).unwrap();
            let info = info::map(&c, None);
            assert_eq!(info["version"].to_string(), "TLSv1.3");
            assert_eq!(info["alpn"].to_string(), "http/1.1");
        }
    }

    #[test]
    fn failures_say_why_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = ca_file(&dir);
        let untrusting = ClientTls::default();
        let error = handshake(&untrusting, &server, "127.0.0.1:1").unwrap_err();
        assert!(describe(&error).contains("unknown issuer"), "{error}");
        server_config(&server).unwrap();
        let error = handshake(&client, &server, "other.example:1").unwrap_err();
        assert!(describe(&error).starts_with("name mismatch"), "{error}");
        let insecure = ClientTls {
            insecure: true,
            ..ClientTls::default()
        };
        handshake(&insecure, &server, "other.example:1").unwrap();
        let no_alpn = ClientTls {
            alpn: vec!["imap".into()],
            ..client.clone()
        };
        let error = handshake(&no_alpn, &server, "localhost:1").unwrap_err();
        assert!(describe(&error).contains("ALPN"), "{error}");
    }

    #[test]
    fn hosts_come_out_of_addresses() {
        assert_eq!(host_of("127.0.0.1:443"), "127.0.0.1");
        assert_eq!(host_of("localhost:8443"), "localhost");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
        assert_eq!(host_of("6380"), "127.0.0.1");
    }

    #[test]
    fn ip_addresses_are_names_too() {
        let options = ClientTls::default();
        assert!(matches!(
            server_name(&options, "127.0.0.1:1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name(&options, "[::1]:1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name(&options, "localhost:1").unwrap(),
            ServerName::DnsName(_)
        ));
    }
}
