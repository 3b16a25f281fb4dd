//! `tls_info()`: what a handshake settled, as a map a test can assert on.

use rhai::{Array, Dynamic, Map};
use rustls::CommonState;
use rustls::pki_types::CertificateDer;

use super::{certs, x509};

/// `#{version, cipher, alpn, sni}` and the peer certificate's fields
/// (`peer_*`); `()` for what was not negotiated (no ALPN, no peer
/// certificate).
pub(crate) fn map(state: &CommonState, sni: Option<&str>) -> Map {
    let mut map = Map::new();
    map.insert(
        "version".into(),
        text(state.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        })),
    );
    map.insert(
        "cipher".into(),
        text(
            state
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite())),
        ),
    );
    map.insert(
        "alpn".into(),
        text(
            state
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        ),
    );
    map.insert("sni".into(), text(sni.map(str::to_string)));
    let leaf = state.peer_certificates().and_then(|chain| chain.first());
    map.extend(peer(leaf));
    map
}

fn text(s: Option<String>) -> Dynamic {
    s.map_or(Dynamic::UNIT, Dynamic::from)
}

/// `peer_fingerprint`, `peer_subject`, `peer_issuer`, `peer_sans` and
/// `peer_not_after` of the peer's leaf certificate; all `()` without one.
/// A certificate too odd to read keeps its fingerprint, so a test can
/// still pin it.
fn peer(leaf: Option<&CertificateDer<'_>>) -> Map {
    let summary = leaf.and_then(|cert| x509::summarize(cert));
    let mut map = Map::new();
    map.insert(
        "peer_fingerprint".into(),
        text(leaf.map(certs::fingerprint)),
    );
    let (subject, issuer, sans, not_after) = match summary {
        Some(s) => (
            Dynamic::from(s.subject),
            Dynamic::from(s.issuer),
            Dynamic::from_array(s.sans.into_iter().map(Dynamic::from).collect::<Array>()),
            text(s.not_after),
        ),
        None => (Dynamic::UNIT, Dynamic::UNIT, Dynamic::UNIT, Dynamic::UNIT),
    };
    map.insert("peer_subject".into(), subject);
    map.insert("peer_issuer".into(), issuer);
    map.insert("peer_sans".into(), sans);
    map.insert("peer_not_after".into(), not_after);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(value: &Dynamic) -> Vec<String> {
        value
            .clone()
            .into_array()
            .unwrap()
            .into_iter()
            .map(|v| v.into_string().unwrap())
            .collect()
    }

    #[test]
    fn a_throwaway_leaf_shows_its_names_issuer_and_expiry() {
        let made = certs::throwaway(&["example.test".into(), "10.1.2.3".into()]).unwrap();
        let map = peer(Some(&made.leaf));
        assert_eq!(map["peer_subject"].to_string(), "CN=localhost");
        assert_eq!(map["peer_issuer"].to_string(), "CN=tcpscript throwaway CA");
        assert_eq!(
            strings(&map["peer_sans"]),
            ["localhost", "127.0.0.1", "::1", "example.test", "10.1.2.3"]
        );
        // rcgen's default: far enough ahead to stay valid for any test.
        let not_after = map["peer_not_after"].to_string();
        assert_eq!(not_after, "4096-01-01T00:00:00Z");
        assert_eq!(
            map["peer_fingerprint"].to_string(),
            certs::fingerprint(&made.leaf)
        );
    }

    #[test]
    fn no_certificate_is_all_unit() {
        let map = peer(None);
        for key in [
            "peer_fingerprint",
            "peer_subject",
            "peer_issuer",
            "peer_sans",
            "peer_not_after",
        ] {
            assert!(map[key].is_unit(), "{key}: {}", map[key]);
        }
    }

    #[test]
    fn an_unreadable_certificate_keeps_its_fingerprint() {
        let junk = CertificateDer::from(b"not DER".to_vec());
        let map = peer(Some(&junk));
        assert_eq!(
            map["peer_fingerprint"].to_string(),
            certs::fingerprint(&junk)
        );
        assert!(map["peer_subject"].is_unit());
        assert!(map["peer_sans"].is_unit());
    }
}
