//! Chat input, valid by construction.

use std::fmt;

use super::Invalid;
use super::text::clean_text;

/// A channel name: `^[a-z0-9][a-z0-9_-]{0,63}$`, so it is safe as an MQTT topic
/// level (no `#`, `+` or `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(String);

impl Channel {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let bytes = text.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 64
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(Invalid::new(
                "must be 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who wrote a message: 1-64 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        clean_text(text, 64, false).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message: 1-2000 characters after trimming; newlines and tabs allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        clean_text(text, 2000, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels() {
        for good in ["general", "a", "0day", "x_y-z", &"a".repeat(64)] {
            assert!(Channel::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "General",
            "-x",
            "_x",
            "a/b",
            "a#",
            "a+",
            "#",
            "+",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(Channel::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_names() {
        assert_eq!(UserName::parse("  alice ").expect("ok").as_str(), "alice");
        assert!(UserName::parse("   ").is_err());
        assert!(
            UserName::parse(&"é".repeat(64)).is_ok(),
            "characters, not bytes"
        );
        assert!(UserName::parse(&"a".repeat(65)).is_err());
        assert!(UserName::parse("a\nb").is_err());
        assert!(UserName::parse("a\u{7}b").is_err());
    }

    #[test]
    fn message_texts() {
        assert_eq!(
            MessageText::parse(" hi\n\tthere ").expect("ok").as_str(),
            "hi\n\tthere"
        );
        assert!(MessageText::parse("").is_err());
        assert!(MessageText::parse(&"x".repeat(2000)).is_ok());
        assert!(MessageText::parse(&"x".repeat(2001)).is_err());
        assert!(MessageText::parse("bell\u{7}").is_err());
        assert!(MessageText::parse("nul\0").is_err());
        assert!(MessageText::parse("esc\u{1b}[31m").is_err());
        assert!(
            MessageText::parse("<img src=x onerror=alert(1)>").is_ok(),
            "markup is text"
        );
    }
}
