//! A failed handshake as the one line a user needs: what went wrong and,
//! where there is one, the flag that fixes it.

use std::io;

use rustls::{AlertDescription, CertificateError, Error};

/// A handshake's error as tokio-rustls gives it: rustls's error inside an
/// `io::Error`, or the socket's own.
pub(crate) fn describe_io(error: &io::Error) -> String {
    if let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    {
        return describe(tls);
    }
    match error.kind() {
        io::ErrorKind::UnexpectedEof => {
            "the peer closed the connection during the handshake".into()
        }
        io::ErrorKind::ConnectionReset => {
            "the peer reset the connection during the handshake".into()
        }
        _ => error.to_string(),
    }
}

/// Why a handshake failed, for a user: `unknown issuer`, `name mismatch`...
pub(crate) fn describe(error: &Error) -> String {
    match error {
        Error::InvalidCertificate(problem) => certificate(problem),
        Error::NoCertificatesPresented => {
            "the client sent no certificate, and this server requires one (--tls-client-ca)".into()
        }
        Error::AlertReceived(alert) => alert_received(*alert),
        Error::PeerIncompatible(why) => {
            format!("no protocol version or cipher suite in common with the peer ({why:?})")
        }
        Error::NoApplicationProtocol => {
            "no ALPN protocol in common with the peer (--tls-alpn)".into()
        }
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
            "the peer does not speak TLS (a plain TCP service?)".into()
        }
        other => other.to_string(),
    }
}

fn certificate(problem: &CertificateError) -> String {
    match problem {
        CertificateError::UnknownIssuer => {
            "the peer's certificate has an unknown issuer (trust its CA with --tls-ca FILE, or skip verification with --insecure)".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "name mismatch: the peer's certificate is not valid for the name connected to (see --tls-servername)".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the peer's certificate has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the peer's certificate is not valid yet".into()
        }
        CertificateError::BadSignature => "the peer's certificate has a bad signature".into(),
        other => format!("the peer's certificate was refused: {other:?}"),
    }
}

fn alert_received(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::CertificateRequired => {
            "the peer requires a client certificate (--tls-cert and --tls-key)".into()
        }
        AlertDescription::UnknownCA => {
            "the peer refused our certificate (not signed by a CA it trusts)".into()
        }
        // rustls sends it for a name mismatch, among other things: the
        // peer's own message says which.
        AlertDescription::BadCertificate => {
            "the peer refused our certificate (a name it did not expect, or a certificate it could not use)".into()
        }
        AlertDescription::ProtocolVersion => "no protocol version in common with the peer".into(),
        AlertDescription::NoApplicationProtocol => {
            "no ALPN protocol in common with the peer (--tls-alpn)".into()
        }
        AlertDescription::HandshakeFailure => {
            "the peer ended the handshake: nothing in common (versions, ciphers or ALPN)".into()
        }
        other => format!("the peer sent the alert {other:?}"),
    }
}
