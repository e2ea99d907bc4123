//! Secret values: loaded from the configuration or from a `*_file`, never shown.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The text every secret is shown as in `check-config`, logs and errors.
pub const REDACTED: &str = "<redacted>";

/// A secret string whose `Debug`, `Display` and `Serialize` never show the value.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The value itself, for the one place that must hand it to a client library.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `deserialize_any`: asked for a string, some formats (serde_json) refuse
        // another type themselves, quoting the value.
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// Accepts a string; anything else is refused with an error that names the
/// kind of value but never the value (serde's own `invalid type` errors quote it).
struct SecretVisitor;

impl SecretVisitor {
    fn refuse<E: de::Error>(kind: &str) -> Result<Secret, E> {
        Err(E::custom(format_args!("expected a string, found {kind}")))
    }
}

impl<'de> de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Self::refuse("a boolean")
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Self::refuse("an integer")
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
        Self::refuse("an integer")
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Self::refuse("an integer")
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
        Self::refuse("an integer")
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Self::refuse("a number")
    }

    fn visit_char<E: de::Error>(self, value: char) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        Self::refuse("bytes")
    }

    fn visit_none<E: de::Error>(self) -> Result<Secret, E> {
        Self::refuse("nothing")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Secret, E> {
        Self::refuse("nothing")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Self::refuse("a list")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Self::refuse("a table")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(secret.to_string(), REDACTED);
        assert_eq!(
            serde_json::to_string(&secret).expect("serialize"),
            format!("\"{REDACTED}\"")
        );
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn a_value_of_another_type_is_refused_without_showing_it() {
        for json in [
            "84729110",
            "-84729110",
            "847.29110",
            "true",
            "[84729110]",
            "{\"a\": 84729110}",
        ] {
            let error = serde_json::from_str::<Secret>(json)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("expected a string"), "{json}: {error}");
            assert!(
                !error.contains("84729110") && !error.contains("847.29"),
                "{json}: {error}"
            );
        }
    }
}
