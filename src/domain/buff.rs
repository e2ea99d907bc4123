//! Buff input, valid by construction.

use super::Invalid;
use super::text::clean_text;

/// A quiz question: 1-500 characters after trimming, no control characters
/// other than newline and tab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question(String);

impl Question {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        clean_text(text, 500, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 2-10 answers, each 1-200 characters after trimming, no two alike (ignoring case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers(Vec<String>);

impl Answers {
    pub fn parse(answers: &[String]) -> Result<Self, Invalid> {
        if !(2..=10).contains(&answers.len()) {
            return Err(Invalid::new("must have from 2 to 10 answers"));
        }
        let mut clean = Vec::with_capacity(answers.len());
        for answer in answers {
            let answer = clean_text(answer, 200, false).map_err(|_| {
                Invalid::new("each answer must be 1-200 characters without control characters")
            })?;
            if clean
                .iter()
                .any(|seen: &String| seen.to_lowercase() == answer.to_lowercase())
            {
                return Err(Invalid::new("must not contain the same answer twice"));
            }
            clean.push(answer);
        }
        Ok(Self(clean))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(list: &[&str]) -> Result<Answers, Invalid> {
        Answers::parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn questions() {
        assert_eq!(Question::parse(" who? ").expect("ok").as_str(), "who?");
        assert!(Question::parse("").is_err());
        assert!(Question::parse(&"q".repeat(500)).is_ok());
        assert!(Question::parse(&"q".repeat(501)).is_err());
        assert!(Question::parse("a\u{0}").is_err());
    }

    #[test]
    fn answer_lists() {
        assert_eq!(
            answers(&[" me ", "you"]).expect("ok").as_slice(),
            ["me", "you"]
        );
        assert!(answers(&["only"]).is_err());
        assert!(answers(&["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]).is_err());
        assert!(answers(&["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]).is_ok());
        assert!(answers(&["me", "Me"]).is_err());
        assert!(answers(&["me", "  "]).is_err());
        assert!(answers(&["me", &"x".repeat(201)]).is_err());
        assert!(answers(&["me", "x\ny"]).is_err());
    }
}
