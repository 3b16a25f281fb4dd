//! `tls_info()`: what a handshake settled, as a map a test can assert on.

use rhai::{Dynamic, Map};
use rustls::CommonState;

use super::certs;

/// `#{version, cipher, alpn, sni, peer_fingerprint}`; `()` for what was
/// not negotiated (no ALPN, no peer certificate).
pub(crate) fn map(state: &CommonState, sni: Option<&str>) -> Map {
    let text = |s: Option<String>| s.map_or(Dynamic::UNIT, Dynamic::from);
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
    map.insert(
        "peer_fingerprint".into(),
        text(
            state
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(certs::fingerprint),
        ),
    );
    map
}
