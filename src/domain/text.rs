//! The rule every free-text field shares.

use super::Invalid;

/// Trims, then checks the length in characters (1..=max) and that no control
/// character is present (newline and tab allowed when `multiline`).
pub fn clean_text(text: &str, max: usize, multiline: bool) -> Result<String, Invalid> {
    let trimmed = text.trim();
    let length = trimmed.chars().count();
    if length == 0 {
        return Err(Invalid::new("must not be empty"));
    }
    if length > max {
        return Err(Invalid::new(format!("must be at most {max} characters")));
    }
    let allowed = |c: char| !c.is_control() || (multiline && (c == '\n' || c == '\t'));
    if !trimmed.chars().all(allowed) {
        return Err(Invalid::new("must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}
