//! `connect(addr, options)`: TLS settings for one connection, given by the
//! script as a map, over what the command's flags gave.

use std::path::PathBuf;

use rhai::{Dynamic, Map};
use rustls::pki_types::ServerName;

use crate::tls::{self, ClientTls, blocking::Client};

/// The keys a script may give, in the order the README lists them.
const KEYS: &str = "tls, ca, insecure, servername, alpn, cert, key";

/// What one `connect(addr, options)` changes; `None`: as the flags say.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ConnectOptions {
    tls: Option<bool>,
    ca: Option<Vec<PathBuf>>,
    insecure: Option<bool>,
    servername: Option<String>,
    alpn: Option<Vec<String>>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl ConnectOptions {
    /// The script's map, checked: a misspelt key or a wrong type is the
    /// script's mistake, told with the keys there are.
    pub(crate) fn parse(map: &Map) -> Result<Self, String> {
        let mut options = ConnectOptions::default();
        for (key, value) in map {
            match key.as_str() {
                "tls" => options.tls = Some(boolean(key, value)?),
                "ca" => {
                    options.ca = Some(strings(key, value, "a path")?.map(PathBuf::from).collect())
                }
                "insecure" => options.insecure = Some(boolean(key, value)?),
                "servername" => {
                    let name = string(key, value, "a name")?;
                    // Refused here, where the script can be pointed at,
                    // rather than as a failed connection.
                    if ServerName::try_from(name.as_str()).is_err() {
                        return Err(format!(
                            "connect(): option `servername`: `{name}` is not a valid TLS server name"
                        ));
                    }
                    options.servername = Some(name);
                }
                "alpn" => options.alpn = Some(strings(key, value, "a protocol")?.collect()),
                "cert" => options.cert = Some(string(key, value, "a path")?.into()),
                "key" => options.key = Some(string(key, value, "a path")?.into()),
                _ => {
                    return Err(format!(
                        "connect(): unknown option `{key}`; the options are {KEYS}"
                    ));
                }
            }
        }
        if options.cert.is_some() != options.key.is_some() {
            return Err("connect(): options `cert` and `key` go together".into());
        }
        Ok(options)
    }

    /// Whether TLS is on, and what it verifies and offers: `flags` (the
    /// command's, with or without `--tls`) with these options over them.
    fn settings(&self, tls_on: bool, flags: &ClientTls) -> Option<ClientTls> {
        if !self.tls.unwrap_or(tls_on) {
            return None;
        }
        let mut settings = flags.clone();
        if let Some(ca) = &self.ca {
            settings.ca = ca.clone();
        }
        if let Some(insecure) = self.insecure {
            settings.insecure = insecure;
        }
        if let Some(name) = &self.servername {
            settings.servername = Some(name.clone());
        }
        if let Some(alpn) = &self.alpn {
            settings.alpn = alpn.clone();
        }
        if let Some(identity) = self.cert.clone().zip(self.key.clone()) {
            settings.identity = Some(identity);
        }
        Some(settings)
    }

    /// The TLS client of this one connection: `None` for plain TCP. The
    /// command's own (`shared`, from `--tls`) when nothing changes, so its
    /// session tickets are reused; else one built for the call, which
    /// reads the system's roots again (a script's extra connections are
    /// few).
    pub(crate) fn client(
        &self,
        shared: Option<&Client>,
        flags: &ClientTls,
    ) -> Result<Option<Client>, tls::TlsError> {
        let Some(settings) = self.settings(shared.is_some(), flags) else {
            return Ok(None);
        };
        if let Some(shared) = shared.filter(|shared| *shared.options() == settings) {
            return Ok(Some(shared.clone()));
        }
        if settings.insecure {
            tls::warn_insecure("connect(..., #{insecure: true})");
        }
        Client::new(settings).map(Some)
    }

    /// The TLS a later `c.starttls()` on this plain connection uses, when
    /// these options change any of it; `None`: the command's.
    pub(crate) fn later(&self, flags: &ClientTls) -> Result<Option<Client>, tls::TlsError> {
        let changes = self.ca.is_some()
            || self.insecure.is_some()
            || self.servername.is_some()
            || self.alpn.is_some()
            || self.cert.is_some();
        if !changes || self.tls == Some(true) {
            return Ok(None);
        }
        let Some(settings) = (ConnectOptions {
            tls: Some(true),
            ..self.clone()
        })
        .settings(true, flags) else {
            return Ok(None);
        };
        if settings.insecure {
            tls::warn_insecure("connect(..., #{insecure: true})");
        }
        Client::new(settings).map(Some)
    }
}

fn type_error(key: &str, wanted: &str, value: &Dynamic) -> String {
    format!(
        "connect(): option `{key}` must be {wanted}, not {}",
        value.type_name()
    )
}

fn boolean(key: &str, value: &Dynamic) -> Result<bool, String> {
    value
        .as_bool()
        .map_err(|_| type_error(key, "true or false", value))
}

fn string(key: &str, value: &Dynamic, what: &str) -> Result<String, String> {
    value
        .clone()
        .into_string()
        .map_err(|_| type_error(key, &format!("{what} (a string)"), value))
}

/// A string, or an array of strings: one path or protocol, or several.
fn strings(key: &str, value: &Dynamic, what: &str) -> Result<impl Iterator<Item = String>, String> {
    let wanted = || format!("{what} or an array of them (strings)");
    let items = match value.clone().into_array() {
        Ok(array) => array,
        Err(_) if value.is_string() => vec![value.clone()],
        Err(_) => return Err(type_error(key, &wanted(), value)),
    };
    let items = items
        .into_iter()
        .map(|item| {
            item.clone()
                .into_string()
                .map_err(|_| type_error(key, &wanted(), &item))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(items.into_iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(source: &str) -> Map {
        rhai::Engine::new().eval::<Map>(source).unwrap()
    }

    #[test]
    fn every_key_overrides_its_flag() {
        let options = ConnectOptions::parse(&map(
            r#"#{tls: true, ca: ["a.pem", "b.pem"], insecure: false, servername: "x.test",
                 alpn: "h2", cert: "c.pem", key: "k.pem"}"#,
        ))
        .unwrap();
        let flags = ClientTls {
            ca: vec!["flag.pem".into()],
            insecure: true,
            alpn: vec!["http/1.1".into()],
            ..ClientTls::default()
        };
        let settings = options.settings(false, &flags).unwrap();
        assert_eq!(settings.ca, [PathBuf::from("a.pem"), "b.pem".into()]);
        assert!(!settings.insecure);
        assert_eq!(settings.servername.as_deref(), Some("x.test"));
        assert_eq!(settings.alpn, ["h2"]);
        assert_eq!(settings.identity, Some(("c.pem".into(), "k.pem".into())));
    }

    #[test]
    fn what_is_not_given_comes_from_the_flags() {
        let flags = ClientTls {
            ca: vec!["flag.pem".into()],
            ..ClientTls::default()
        };
        let none = ConnectOptions::parse(&Map::new()).unwrap();
        assert_eq!(none.settings(false, &flags), None);
        assert_eq!(none.settings(true, &flags).unwrap().ca, flags.ca);
        let off = ConnectOptions::parse(&map("#{tls: false}")).unwrap();
        assert_eq!(off.settings(true, &flags), None);
    }

    #[test]
    fn mistakes_name_the_key_and_the_keys_there_are() {
        let error = |source: &str| ConnectOptions::parse(&map(source)).unwrap_err();
        assert_eq!(
            error("#{tsl: true}"),
            "connect(): unknown option `tsl`; the options are tls, ca, insecure, servername, alpn, cert, key"
        );
        assert_eq!(
            error("#{tls: 1}"),
            "connect(): option `tls` must be true or false, not i64"
        );
        assert_eq!(
            error(r#"#{ca: ["a.pem", 2]}"#),
            "connect(): option `ca` must be a path or an array of them (strings), not i64"
        );
        assert_eq!(
            error(r#"#{cert: "c.pem"}"#),
            "connect(): options `cert` and `key` go together"
        );
        assert!(error(r#"#{servername: "not a name"}"#).contains("not a valid TLS server name"));
    }
}
