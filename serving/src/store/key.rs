//! Content-addressed slot keys: `[namespace:]icae:v1:{fingerprint}:{sha256(token ids)}`.

use sha2::{Digest, Sha256};

use icae_core::error::InputError;

pub const MAX_NAMESPACE_LEN: usize = 64;

/// A tenant namespace, checked once at the boundary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespace(Option<String>);

impl Namespace {
    /// An empty string means "no namespace".
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        if raw.is_empty() {
            return Ok(Namespace(None));
        }
        let valid_chars = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if raw.len() > MAX_NAMESPACE_LEN || !valid_chars {
            return Err(InputError::BadParameter {
                name: "namespace",
                value: format!("{raw:?}"),
                expected: format!("must be 1-{MAX_NAMESPACE_LEN} characters of [A-Za-z0-9_.-]"),
            });
        }
        Ok(Namespace(Some(raw.to_string())))
    }
}

/// The key of a document's slots under one model fingerprint.
pub fn slot_key(namespace: &Namespace, fingerprint: &str, token_ids: &[u32]) -> String {
    let mut hasher = Sha256::new();
    for id in token_ids {
        hasher.update(id.to_le_bytes());
    }
    let digest = hex::encode(hasher.finalize());
    match &namespace.0 {
        Some(ns) => format!("{ns}:icae:v1:{fingerprint}:{digest}"),
        None => format!("icae:v1:{fingerprint}:{digest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_tokens_fingerprint_and_namespace() {
        let none = Namespace::parse("").unwrap();
        let a = slot_key(&none, "fp", &[1, 2, 3]);
        assert!(a.starts_with("icae:v1:fp:") && a.len() == "icae:v1:fp:".len() + 64);
        assert_eq!(a, slot_key(&none, "fp", &[1, 2, 3]));
        assert_ne!(a, slot_key(&none, "fp", &[1, 2, 4]));
        assert_ne!(a, slot_key(&none, "fp2", &[1, 2, 3]));
        let tenant = Namespace::parse("tenant-7").unwrap();
        assert_eq!(slot_key(&tenant, "fp", &[1, 2, 3]), format!("tenant-7:{a}"));
    }

    #[test]
    fn bad_namespaces_are_refused_with_the_rule() {
        for bad in ["a b", "x:y", &"n".repeat(65), "ü"] {
            let err = Namespace::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("namespace") && err.contains("[A-Za-z0-9_.-]"),
                "{err}"
            );
        }
    }
}
