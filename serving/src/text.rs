//! Texts are refused by size before they are tokenized: tokenizing a 60 MB text takes tens
//! of seconds and gigabytes, only to be refused afterwards. And client-supplied text is
//! quoted in messages only cut to a bounded size.

use icae_core::InputError;

/// Bytes a text may have per token it is allowed: texts are refused by size before the
/// tokenizer sees them. Natural text is 3–6 bytes per token; 16 leaves room for code,
/// tables and non-Latin scripts while keeping tokenization bounded.
pub const BYTES_PER_TOKEN: usize = 16;

/// Refuse `text` (the request field `name`) when it has more than `max_bytes` bytes.
pub fn check_text_bytes(
    name: &'static str,
    text: &str,
    max_bytes: usize,
) -> Result<(), InputError> {
    if text.len() > max_bytes {
        return Err(InputError::BadParameter {
            name,
            value: format!("{} bytes", text.len()),
            expected: format!(
                "must have at most {max_bytes} bytes ({} per token allowed), checked before \
                 tokenizing",
                BYTES_PER_TOKEN
            ),
        });
    }
    Ok(())
}

/// True when `text` shows nothing: only whitespace and invisible format characters (zero-width
/// space and joiners, word joiner, byte-order mark, soft hyphen). Such a document or question
/// is refused as empty rather than compressed or answered.
pub fn is_blank(text: &str) -> bool {
    text.chars().all(|c| {
        c.is_whitespace()
            || matches!(
                c,
                '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}' | '\u{180E}'
            )
    })
}

/// Longest client-supplied value quoted in a message.
pub const MAX_ECHO_BYTES: usize = 128;

/// A client-supplied value as messages quote it: debug-escaped and cut to a bounded size.
pub fn shown(value: &str) -> String {
    let quoted = format!("{value:?}");
    if quoted.len() <= MAX_ECHO_BYTES {
        return quoted;
    }
    format!(
        "{}… ({} bytes)",
        bounded(quoted, MAX_ECHO_BYTES),
        value.len()
    )
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_text_is_blank() {
        for blank in ["", " \n\t", "\u{200B}", "\u{200B}\u{FEFF} \u{2060}\u{00AD}"] {
            assert!(is_blank(blank), "{blank:?}");
        }
        for shown in ["a", "\u{200B}a", "\u{00E9}", "\u{4E2D}"] {
            assert!(!is_blank(shown), "{shown:?}");
        }
    }

    #[test]
    fn the_size_and_the_limit_are_named() {
        assert!(check_text_bytes("prompt", "abc", 3).is_ok());
        let err = check_text_bytes("prompt", "abcd", 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("prompt") && err.contains("4 bytes") && err.contains("at most 3"),
            "{err}"
        );
    }
}
