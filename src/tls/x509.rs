//! The few fields of a peer's certificate that `tls_info()` shows: subject,
//! issuer, DNS and IP SANs, and expiry.
//!
//! Read with yasna, the DER reader rcgen already builds, walking just the
//! path to those fields: a full X.509 crate (x509-parser and its asn1-rs,
//! der-parser, nom, oid-registry and proc macros) would add about 30 s of
//! CPU to a cold build on 2 cores for four fields. The certificate is
//! whatever the peer sent (`--insecure` verifies nothing), so reading is
//! lenient (BER) and anything unreadable is left out, never an error.

use std::net::{Ipv4Addr, Ipv6Addr};

use yasna::models::{ObjectIdentifier, TaggedDerValue};
use yasna::{ASN1Result, BERReader, BERReaderSeq, Tag, TagClass};

/// What `tls_info()` shows of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Summary {
    /// RFC 4514: `CN=localhost`, the last RDN first, `,` between RDNs.
    pub(crate) subject: String,
    pub(crate) issuer: String,
    /// DNS names, and IP addresses as text (`127.0.0.1`, `::1`), in order.
    pub(crate) sans: Vec<String>,
    /// RFC 3339 in UTC: `2027-11-25T21:00:00Z`; `None` if not in the form
    /// DER requires (whole seconds, `Z`).
    pub(crate) not_after: Option<String>,
}

/// The summary of a DER certificate; `None` if it cannot be read.
pub(crate) fn summarize(der: &[u8]) -> Option<Summary> {
    yasna::parse_ber(der, |r| {
        r.read_sequence(|r| {
            let summary = r.next().read_sequence(tbs_certificate)?;
            r.next().read_der()?; // signatureAlgorithm
            r.next().read_der()?; // signatureValue
            Ok(summary)
        })
    })
    .ok()
}

fn tbs_certificate(r: &mut BERReaderSeq<'_, '_>) -> ASN1Result<Summary> {
    r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?; // version
    r.next().read_der()?; // serialNumber, any size
    r.next().read_der()?; // signature
    let issuer = name(r.next())?;
    let not_after = r.next().read_sequence(|r| {
        r.next().read_der()?; // notBefore
        Ok(rfc3339(&r.next().read_tagged_der()?))
    })?;
    let subject = name(r.next())?;
    r.next().read_der()?; // subjectPublicKeyInfo
    for unique_id in [1, 2] {
        r.read_optional(|r| r.read_tagged_implicit(Tag::context(unique_id), |r| r.read_bytes()))?;
    }
    let sans = r
        .read_optional(|r| r.read_tagged(Tag::context(3), extensions))?
        .unwrap_or_default();
    Ok(Summary {
        subject,
        issuer,
        sans,
        not_after,
    })
}

/// The subjectAltName extension's DNS names and IP addresses.
fn extensions(r: BERReader<'_, '_>) -> ASN1Result<Vec<String>> {
    const SUBJECT_ALT_NAME: [u64; 4] = [2, 5, 29, 17];
    let mut sans = Vec::new();
    r.read_sequence_of(|r| {
        r.read_sequence(|r| {
            let id = r.next().read_oid()?;
            r.read_optional(|r| r.read_bool())?; // critical
            let value = r.next().read_bytes()?;
            if id.components().as_slice() == SUBJECT_ALT_NAME {
                sans = yasna::parse_ber(&value, |r| r.collect_sequence_of(general_name))?
                    .into_iter()
                    .flatten()
                    .collect();
            }
            Ok(())
        })
    })?;
    Ok(sans)
}

/// A dNSName or iPAddress as text; other kinds of name are skipped.
fn general_name(r: BERReader<'_, '_>) -> ASN1Result<Option<String>> {
    let name = r.read_tagged_der()?;
    if name.tag().tag_class != TagClass::ContextSpecific {
        return Ok(None);
    }
    let value = name.value();
    Ok(match (name.tag().tag_number, value.len()) {
        (2, _) => Some(String::from_utf8_lossy(value).into_owned()),
        (7, 4) => <[u8; 4]>::try_from(value)
            .ok()
            .map(|ip| Ipv4Addr::from(ip).to_string()),
        (7, 16) => <[u8; 16]>::try_from(value)
            .ok()
            .map(|ip| Ipv6Addr::from(ip).to_string()),
        _ => None,
    })
}

/// A Name as RFC 4514 writes it: RDNs last first, joined by `,`; the
/// attributes of a multi-valued RDN joined by `+`.
fn name(r: BERReader<'_, '_>) -> ASN1Result<String> {
    let rdns = r.collect_sequence_of(|r| {
        r.collect_set_of(|r| {
            r.read_sequence(|r| {
                let kind = r.next().read_oid()?;
                let value = r.next().read_der()?;
                Ok(format!(
                    "{}={}",
                    attribute_type(&kind),
                    attribute_value(&value)
                ))
            })
        })
    })?;
    Ok(rdns
        .iter()
        .rev()
        .map(|rdn| rdn.join("+"))
        .collect::<Vec<_>>()
        .join(","))
}

/// The short names RFC 4514 lists; any other type as its dotted OID.
fn attribute_type(oid: &ObjectIdentifier) -> String {
    let short = match oid.components().as_slice() {
        [2, 5, 4, 3] => "CN",
        [2, 5, 4, 7] => "L",
        [2, 5, 4, 8] => "ST",
        [2, 5, 4, 10] => "O",
        [2, 5, 4, 11] => "OU",
        [2, 5, 4, 6] => "C",
        [2, 5, 4, 9] => "STREET",
        [0, 9, 2342, 19200300, 100, 1, 25] => "DC",
        [0, 9, 2342, 19200300, 100, 1, 1] => "UID",
        _ => return oid.to_string(),
    };
    short.to_string()
}

/// A string value, escaped as RFC 4514 asks; any other value as `#` and
/// the hex of its encoding.
fn attribute_value(der: &[u8]) -> String {
    let hex = || {
        let digits: String = der.iter().map(|b| format!("{b:02x}")).collect();
        format!("#{digits}")
    };
    let Ok(value) = yasna::parse_ber(der, |r| r.read_tagged_der()) else {
        return hex();
    };
    match text(&value) {
        Some(text) => escape(&text),
        None => hex(),
    }
}

/// The text of a string type.
fn text(value: &TaggedDerValue) -> Option<String> {
    const UTF8: u64 = 12;
    const NUMERIC: u64 = 18;
    const PRINTABLE: u64 = 19;
    const TELETEX: u64 = 20;
    const IA5: u64 = 22;
    const VISIBLE: u64 = 26;
    const UNIVERSAL: u64 = 28;
    const BMP: u64 = 30;
    let tag = value.tag();
    if tag.tag_class != TagClass::Universal {
        return None;
    }
    let bytes = value.value();
    match tag.tag_number {
        UTF8 | NUMERIC | PRINTABLE | IA5 | VISIBLE => {
            Some(String::from_utf8_lossy(bytes).into_owned())
        }
        // T.61 in name, Latin-1 in practice.
        TELETEX => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        BMP => {
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            Some(String::from_utf16_lossy(&units))
        }
        UNIVERSAL => Some(
            bytes
                .chunks(4)
                .map(|c| {
                    let mut unit = [0; 4];
                    unit[..c.len()].copy_from_slice(c);
                    char::from_u32(u32::from_be_bytes(unit)).unwrap_or('\u{FFFD}')
                })
                .collect(),
        ),
        _ => None,
    }
}

/// RFC 4514 section 2.4: the characters that would end or change a value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), the
/// forms DER allows, as RFC 3339.
fn rfc3339(time: &TaggedDerValue) -> Option<String> {
    const UTC_TIME: u64 = 23;
    const GENERALIZED_TIME: u64 = 24;
    let text = std::str::from_utf8(time.value()).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = match (time.tag().tag_number, digits.len()) {
        // RFC 5280: a two-digit year of 50 or more is 19YY.
        (UTC_TIME, 12) => {
            let century = if &digits[..2] >= "50" { "19" } else { "20" };
            format!("{century}{digits}")
        }
        (GENERALIZED_TIME, 14) => digits.to_string(),
        _ => return None,
    };
    let d = |range: std::ops::Range<usize>| &full[range];
    Some(format!(
        "{}-{}-{}T{}:{}:{}Z",
        d(0..4),
        d(4..6),
        d(6..8),
        d(8..10),
        d(10..12),
        d(12..14)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_would_end_a_value() {
        assert_eq!(escape("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape("#1 "), "\\#1\\ ");
        assert_eq!(escape(" x"), "\\ x");
        assert_eq!(escape("plain name"), "plain name");
    }

    #[test]
    fn times_become_rfc_3339() {
        let utc =
            |text: &str| TaggedDerValue::from_tag_and_bytes(yasna::tags::TAG_UTCTIME, text.into());
        let general = |text: &str| {
            TaggedDerValue::from_tag_and_bytes(yasna::tags::TAG_GENERALIZEDTIME, text.into())
        };
        assert_eq!(
            rfc3339(&utc("271125210000Z")).as_deref(),
            Some("2027-11-25T21:00:00Z")
        );
        assert_eq!(
            rfc3339(&utc("991231235959Z")).as_deref(),
            Some("1999-12-31T23:59:59Z")
        );
        assert_eq!(
            rfc3339(&general("20500101000000Z")).as_deref(),
            Some("2050-01-01T00:00:00Z")
        );
        assert_eq!(rfc3339(&general("20500101000000.5Z")), None);
        assert_eq!(rfc3339(&utc("2711252100+0100")), None);
    }

    #[test]
    fn a_name_reads_last_rdn_first_with_commas_escaped() {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CountryName, "DE");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "a.test");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let summary = summarize(cert.der()).unwrap();
        assert_eq!(summary.subject, "CN=a.test,O=Acme\\, Inc.,C=DE");
        assert_eq!(summary.issuer, summary.subject);
        assert_eq!(summary.sans, ["a.test"]);
    }

    #[test]
    fn garbage_is_no_summary() {
        assert_eq!(summarize(b""), None);
        assert_eq!(summarize(b"\x30\x03\x02\x01\x01"), None);
    }
}
