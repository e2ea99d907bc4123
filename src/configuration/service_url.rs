//! URLs of backing services, which may carry a password that must never be shown:
//! in the userinfo (`postgres://user:PASSWORD@host`) or in the query
//! (`?password=…`, `?sslpassword=…`, `?sslkey=…`, as libpq and sqlx accept them).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use super::secret::REDACTED;

/// A `postgres://`, `redis://` or `mqtt://` URL. Shown with any password replaced
/// by `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceUrl(Url);

impl ServiceUrl {
    pub fn parse(text: &str) -> Result<Self, url::ParseError> {
        Url::parse(text).map(Self)
    }

    pub fn scheme(&self) -> &str {
        self.0.scheme()
    }

    pub fn url(&self) -> &Url {
        &self.0
    }

    /// Whether the URL carries a password, in its userinfo or as a query parameter.
    pub fn has_password(&self) -> bool {
        self.0.password().is_some()
            || self
                .0
                .query_pairs()
                .any(|(name, _)| name.eq_ignore_ascii_case("password"))
    }

    /// The URL without its password and the password it carried, decoded: the
    /// userinfo's, overridden by a `password` query parameter (as sqlx reads a
    /// `postgres://` URL). For drivers that record the URL they are given
    /// (sea-orm keeps its connect options, URL included, in a trace span): the
    /// password goes to the driver's options directly instead.
    pub fn without_password(&self) -> Result<(Url, Option<String>), String> {
        let mut url = self.0.clone();
        let mut password = match url.password() {
            Some(encoded) => Some(
                percent_encoding::percent_decode_str(encoded)
                    .decode_utf8()
                    .map_err(|_| "the URL's password is not UTF-8 once percent-decoded".to_owned())?
                    .into_owned(),
            ),
            None => None,
        };
        // Only fails for URLs that cannot have a password, and this one may have one.
        let _ = url.set_password(None);
        if url.query_pairs().any(|(name, _)| name == "password") {
            let mut kept = Vec::new();
            for (name, value) in url.query_pairs() {
                if name == "password" {
                    password = Some(value.into_owned());
                } else {
                    kept.push((name.into_owned(), value.into_owned()));
                }
            }
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
        }
        Ok((url, password))
    }

    /// The URL with `password` set, for handing to a client library.
    pub fn with_password(&self, password: &str) -> Result<Url, String> {
        let mut url = self.0.clone();
        url.set_password(Some(password))
            .map_err(|()| format!("a {} URL cannot carry a password", url.scheme()))?;
        Ok(url)
    }

    fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

/// Query parameters whose value is (or points at) a secret. Compared without
/// regard to case; anything whose name contains one of these is hidden.
const SECRET_PARAMETERS: &[&str] = &[
    "password", "passwd", "pwd", "secret", "token", "sslkey", "ssl-key",
];

fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETERS.iter().any(|secret| name.contains(secret))
}

/// Whether a query parameter's value is to be hidden: a secret parameter, or one
/// that passes settings on (libpq's `options=-c app.password=…`) naming a secret.
fn hides_value(name: &str, value: &str) -> bool {
    is_secret_parameter(name)
        || (name.eq_ignore_ascii_case("options") && is_secret_parameter(value))
}

/// `url` as text with the password of its userinfo, the value of every secret
/// query parameter and any fragment (which no driver reads, and which may be a
/// misplaced `#password=…`) replaced by `<redacted>`.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Setting a password only fails for URLs that cannot have one, and this one has one.
        let _ = shown.set_password(Some(REDACTED));
    }
    if shown.fragment().is_some() {
        shown.set_fragment(Some(REDACTED));
    }
    if shown
        .query_pairs()
        .any(|(name, value)| hides_value(&name, &value))
    {
        let pairs: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(name, value)| {
                let value = if hides_value(&name, &value) {
                    REDACTED.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// `text` with every URL in it (`scheme://…`, up to the next blank or quote)
/// passed through [`redact_url`]: for messages of other libraries (connection
/// errors, for instance) that may quote the URL they were given.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("://") {
        // The scheme: the letters, digits, `+`, `-` and `.` right before `://`.
        let scheme_start = rest[..found]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[found..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .map_or(rest.len(), |i| found + i);
        out.push_str(&rest[..scheme_start]);
        let candidate = &rest[scheme_start..end];
        match Url::parse(candidate) {
            Ok(url) if scheme_start < found => out.push_str(&redact_url(&url)),
            // Not a URL after all: keep it, but never a userinfo password.
            _ => out.push_str(&redact_userinfo(candidate)),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `scheme://user:password@…` with the password hidden, for text that does not
/// parse as a URL.
fn redact_userinfo(candidate: &str) -> String {
    let Some(authority_start) = candidate.find("://").map(|i| i + 3) else {
        return candidate.to_owned();
    };
    let authority_end = candidate[authority_start..]
        .find(['/', '?', '#'])
        .map_or(candidate.len(), |i| authority_start + i);
    let authority = &candidate[authority_start..authority_end];
    match authority.rfind('@') {
        Some(at) if authority[..at].contains(':') => {
            let colon = authority[..at].find(':').unwrap_or(at);
            format!(
                "{}{}:{REDACTED}{}",
                &candidate[..authority_start],
                &authority[..colon],
                &candidate[authority_start + at..]
            )
        }
        _ => candidate.to_owned(),
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceUrl({})", self.redacted())
    }
}

impl Serialize for ServiceUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for ServiceUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        // The parse error never echoes the input, which may hold a password.
        ServiceUrl::parse(&text).map_err(|e| serde::de::Error::custom(format!("not a URL: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted_everywhere() {
        let url = ServiceUrl::parse("postgres://hubbub:s3cret@db:5432/hubbub").expect("url");
        for shown in [url.to_string(), format!("{url:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("hubbub:%3Credacted%3E@db") || shown.contains(REDACTED));
        }
        assert!(url.has_password());
    }

    #[test]
    fn secret_query_parameters_are_redacted() {
        let url = ServiceUrl::parse(
            "postgres://u@h/db?sslmode=require&password=hunter2&SSLPassword=k3y&sslkey=/run/k.pem&ssl-key=/run/k2.pem&application_name=app",
        )
        .expect("url");
        assert!(url.has_password());
        for shown in [
            url.to_string(),
            format!("{url:?}"),
            serde_json::to_string(&url).expect("json"),
        ] {
            for secret in ["hunter2", "k3y", "k.pem", "k2.pem"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("sslmode=require"), "{shown}");
            assert!(shown.contains("application_name=app"), "{shown}");
        }
    }

    #[test]
    fn urls_inside_messages_are_redacted() {
        let text = "error connecting to postgres://u:hunter2@db:5432/x?sslpassword=k3y: refused; \
                    and redis://:r3dis@cache:6379, and weird://a:b@[bad, plain text";
        let shown = redact_urls_in(text);
        for secret in ["hunter2", "k3y", "r3dis", ":b@"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("refused; and"), "{shown}");
        assert!(shown.ends_with("plain text"), "{shown}");
        assert_eq!(redact_urls_in("no urls here"), "no urls here");
    }

    #[test]
    fn the_password_comes_out_decoded_and_leaves_the_url() {
        for (text, rest, password) in [
            (
                "postgres://u:s3cr%40t%2Fp%25ss@h:5432/db?sslmode=require",
                "postgres://u@h:5432/db?sslmode=require",
                Some("s3cr@t/p%ss"),
            ),
            (
                "postgres://u@h/db?sslmode=require&password=p%26w",
                "postgres://u@h/db?sslmode=require",
                Some("p&w"),
            ),
            // sqlx reads the query after the userinfo: the query wins.
            (
                "postgres://u:first@h/db?password=second",
                "postgres://u@h/db",
                Some("second"),
            ),
            ("postgres://u@h/db", "postgres://u@h/db", None),
        ] {
            let (url, found) = ServiceUrl::parse(text)
                .expect("url")
                .without_password()
                .expect("split");
            assert_eq!(url.as_str(), rest, "{text}");
            assert_eq!(found.as_deref(), password, "{text}");
        }
        let error = ServiceUrl::parse("postgres://u:%ff@h/db")
            .expect("url")
            .without_password()
            .expect_err("not UTF-8");
        assert!(!error.contains("%ff"), "{error}");
    }

    #[test]
    fn password_can_be_injected() {
        let url = ServiceUrl::parse("postgres://hubbub@db/hubbub").expect("url");
        let full = url.with_password("p@ss/word").expect("password");
        assert_eq!(full.password(), Some("p%40ss%2Fword"));
        assert!(!url.to_string().contains("p@ss"));
    }
}
