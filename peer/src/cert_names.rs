//! The names a client certificate carries, for `verify_and_map`: the
//! certificate itself is the credential, and one of its names is the user.
//!
//! nats-server tries, in order: e-mail SANs, DNS SANs, URI SANs, then the
//! subject distinguished name. A configured DN matches when it holds the
//! same attributes as the certificate's subject, in any order (so both
//! `CN=alice,O=Acme` and Go's reversed `O=Acme,CN=alice` spelling work).

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Names found in a certificate, in the order nats-server consults them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    pub emails: Vec<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    /// Subject attributes in certificate order, as (short type, value).
    pub subject: Vec<(String, String)>,
}

impl CertNames {
    /// Reads the names from a DER certificate; `None` if it does not parse.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut names = CertNames::default();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::RFC822Name(e) => names.emails.push(e.to_string()),
                    GeneralName::DNSName(d) => names.dns.push(d.to_string()),
                    GeneralName::URI(u) => names.uris.push(u.to_string()),
                    _ => {}
                }
            }
        }
        for rdn in cert.subject().iter() {
            for atv in rdn.iter() {
                let oid = atv.attr_type().to_id_string();
                let ty = short_name(&oid).map_or(oid, str::to_owned);
                if let Ok(v) = atv.as_str() {
                    names.subject.push((ty, v.to_owned()));
                }
            }
        }
        Some(names)
    }

    /// The subject as Go prints it (`cert.Subject.String()`): attributes in
    /// reverse order, `TYPE=value` joined by commas. Shown in logs and used
    /// as the user name when a configured user is spelled that way.
    pub fn subject_string(&self) -> String {
        self.subject
            .iter()
            .rev()
            .map(|(t, v)| format!("{t}={}", escape_dn_value(v)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether the configured user name `dn` (an RFC 2253-style DN) names
    /// this certificate's subject: the same attributes, in any order.
    pub fn subject_matches(&self, dn: &str) -> bool {
        let Some(mut wanted) = parse_dn(dn) else {
            return false;
        };
        if wanted.is_empty() || wanted.len() != self.subject.len() {
            return false;
        }
        let mut have: Vec<(String, String)> = self
            .subject
            .iter()
            .map(|(t, v)| (t.to_ascii_uppercase(), v.clone()))
            .collect();
        have.sort();
        wanted.sort();
        have == wanted
    }

    /// The first configured user this certificate maps to, trying names in
    /// nats-server's order among the configured `users`.
    pub fn map_user<'a>(&self, users: impl Iterator<Item = &'a str> + Clone) -> Option<String> {
        let plain = self.emails.iter().chain(&self.dns).chain(&self.uris);
        for name in plain {
            if users.clone().any(|u| u == name) {
                return Some(name.clone());
            }
        }
        users
            .clone()
            .find(|u| u.contains('=') && self.subject_matches(u))
            .map(str::to_owned)
    }
}

/// Short names Go uses for subject attribute types.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.5" => "SERIALNUMBER",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.17" => "POSTALCODE",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "EMAILADDRESS",
        _ => return None,
    })
}

fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Parses `TYPE=value,TYPE=value` (RFC 2253 escapes, `+` multi-valued RDNs
/// flattened) into upper-cased types and values; `None` if malformed.
fn parse_dn(dn: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut parts = Vec::new();
    let mut chars = dn.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.push(chars.next()?),
            ',' | '+' | ';' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    for p in parts {
        let (t, v) = p.split_once('=')?;
        let t = t.trim().to_ascii_uppercase();
        let t = match t.as_str() {
            "E" | "EMAIL" => "EMAILADDRESS".to_owned(),
            "S" => "ST".to_owned(),
            _ => t,
        };
        out.push((t, v.trim().to_owned()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> CertNames {
        CertNames {
            emails: vec!["alice@example.com".into()],
            dns: vec!["alice.example.com".into()],
            uris: vec![],
            subject: vec![
                ("C".into(), "US".into()),
                ("O".into(), "Acme, Inc".into()),
                ("CN".into(), "alice".into()),
            ],
        }
    }

    #[test]
    fn subject_string_is_reversed_like_go() {
        assert_eq!(names().subject_string(), "CN=alice,O=Acme\\, Inc,C=US");
    }

    #[test]
    fn dn_matches_in_any_order() {
        let n = names();
        assert!(n.subject_matches("CN=alice,O=Acme\\, Inc,C=US"));
        assert!(n.subject_matches("C=US, O=Acme\\, Inc, CN=alice"));
        assert!(!n.subject_matches("CN=alice,O=Acme\\, Inc"));
        assert!(!n.subject_matches("CN=bob,O=Acme\\, Inc,C=US"));
        assert!(!n.subject_matches("garbage"));
    }

    #[test]
    fn map_user_prefers_email_then_dns_then_subject() {
        let n = names();
        let users = [
            "CN=alice,O=Acme\\, Inc,C=US",
            "alice.example.com",
            "alice@example.com",
        ];
        assert_eq!(
            n.map_user(users.iter().copied()).as_deref(),
            Some("alice@example.com")
        );
        let users = ["CN=alice,O=Acme\\, Inc,C=US", "alice.example.com"];
        assert_eq!(
            n.map_user(users.iter().copied()).as_deref(),
            Some("alice.example.com")
        );
        let users = ["CN=alice,O=Acme\\, Inc,C=US"];
        assert_eq!(
            n.map_user(users.iter().copied()).as_deref(),
            Some("CN=alice,O=Acme\\, Inc,C=US")
        );
        let users = ["bob"];
        assert_eq!(n.map_user(users.iter().copied()), None);
    }
}
