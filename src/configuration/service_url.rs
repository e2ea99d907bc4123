//! URLs of backing services, which may carry a password that must never be shown.

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

    pub fn has_password(&self) -> bool {
        self.0.password().is_some()
    }

    /// The URL with `password` set, for handing to a client library.
    pub fn with_password(&self, password: &str) -> Result<Url, String> {
        let mut url = self.0.clone();
        url.set_password(Some(password))
            .map_err(|()| format!("a {} URL cannot carry a password", url.scheme()))?;
        Ok(url)
    }

    fn redacted(&self) -> String {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            // Setting a password only fails for URLs that cannot have one, and this one has one.
            let _ = shown.set_password(Some(REDACTED));
        }
        shown.to_string()
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
    fn password_can_be_injected() {
        let url = ServiceUrl::parse("postgres://hubbub@db/hubbub").expect("url");
        let full = url.with_password("p@ss/word").expect("password");
        assert_eq!(full.password(), Some("p%40ss%2Fword"));
        assert!(!url.to_string().contains("p@ss"));
    }
}
