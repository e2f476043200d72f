//! Texts are refused by size before they are tokenized: tokenizing a 60 MB text takes tens
//! of seconds and gigabytes, only to be refused afterwards.

use icae_core::InputError;

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
                crate::BYTES_PER_TOKEN
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
