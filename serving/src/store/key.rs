//! Slot keys: `[tenant/{tenant}:][{namespace}:]icae:v1:{fingerprint}:{content}`, where the
//! content is the SHA-256 of the token ids, followed for refined slots by `-r{steps}` and, with
//! a target loss, `-t{target}`: a refined and a plain compression are different values.
//!
//! The tenant part comes from the caller's authenticated identity, never from the request:
//! a tenant can neither name nor probe another tenant's keys. The namespace is the client's
//! own subdivision (inside its tenant when there is one). The services only ever read keys
//! of this schema.

use icae_core::error::InputError;
use thiserror::Error;

use crate::security::identity::Tenant;
use crate::text::shown;

pub const MAX_NAMESPACE_LEN: usize = 64;
/// Longest key a client may name: the longest key this schema produces fits with room.
pub const MAX_KEY_BYTES: usize = 512;

const SCHEMA: &str = "icae:v1";
const TENANT_PREFIX: &str = "tenant/";

/// A client namespace, checked once at the boundary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespace(Option<String>);

impl Namespace {
    /// An empty string means "no namespace".
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        if raw.is_empty() {
            return Ok(Namespace(None));
        }
        if !is_name(raw, MAX_NAMESPACE_LEN) {
            return Err(InputError::BadParameter {
                name: "namespace",
                value: shown(raw),
                expected: format!("must be 1-{MAX_NAMESPACE_LEN} characters of [A-Za-z0-9_.-]"),
            });
        }
        Ok(Namespace(Some(raw.to_string())))
    }
}

fn is_name(raw: &str, max: usize) -> bool {
    !raw.is_empty()
        && raw.len() <= max
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Where a request's keys live: the caller's tenant (if authenticated) and its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyScope {
    pub tenant: Option<Tenant>,
    pub namespace: Namespace,
}

impl KeyScope {
    fn prefix(&self) -> String {
        let mut prefix = String::new();
        if let Some(tenant) = &self.tenant {
            prefix.push_str(TENANT_PREFIX);
            prefix.push_str(tenant.as_str());
            prefix.push(':');
        }
        if let Some(namespace) = &self.namespace.0 {
            prefix.push_str(namespace);
            prefix.push(':');
        }
        prefix
    }
}

/// The key of a document's slots under one model fingerprint, from the document's
/// [`token_digest`](icae_core::slots::token_digest).
pub fn slot_key(scope: &KeyScope, fingerprint: &str, token_digest: &str) -> String {
    format!("{}{SCHEMA}:{fingerprint}:{token_digest}", scope.prefix())
}

/// The part of a key after the fingerprint: the document's digest, the slots per segment
/// when fewer than the adapter's (`slots_per_segment`), and for refined slots the
/// refinement asked for (steps and target loss decide the value).
pub fn slot_content(
    token_digest: &str,
    slots_per_segment: Option<usize>,
    refine_steps: usize,
    target_loss: Option<f64>,
) -> String {
    let mut content = token_digest.to_string();
    if let Some(k) = slots_per_segment {
        content.push_str(&format!("-s{k}"));
    }
    match (refine_steps, target_loss) {
        (0, _) => {}
        (steps, None) => content.push_str(&format!("-r{steps}")),
        (steps, Some(target)) => content.push_str(&format!("-r{steps}-t{target}")),
    }
    content
}

/// Whether `content` is what [`slot_content`] makes: 64 hex digits, then optionally
/// `-s{slots}` (1 to 4 digits, not 0), then optionally `-r{steps}` (1 to 6 digits, not 0)
/// and `-t{target}` (a number as Rust prints it).
fn is_content(content: &str) -> bool {
    let (digest, mut rest) = content.split_at(content.len().min(64));
    let hex = digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return false;
    }
    if let Some(after) = rest.strip_prefix("-s") {
        let end = after.find('-').unwrap_or(after.len());
        if !is_count(&after[..end], 4) {
            return false;
        }
        rest = &after[end..];
    }
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_prefix("-r") else {
        return false;
    };
    let (steps, target) = match rest.split_once("-t") {
        Some((steps, target)) => (steps, Some(target)),
        None => (rest, None),
    };
    let steps_ok = is_count(steps, 6);
    let target_ok = target.is_none_or(|t| {
        t.parse::<f64>()
            .is_ok_and(|v| v.is_finite() && v >= 0.0 && v.to_string() == t)
    });
    steps_ok && target_ok
}

/// 1 to `max_digits` decimal digits, without a leading 0 (so never 0).
fn is_count(digits: &str, max_digits: usize) -> bool {
    (1..=max_digits).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// A key a client named, checked against the schema and the caller's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotKey {
    pub key: String,
    pub fingerprint: String,
    /// The document's token digest the key names (its 64 hex digits).
    pub token_digest: String,
}

/// Why a key given by a client is not read.
#[derive(Debug, Error)]
pub enum KeyError {
    /// Not a key of the schema.
    #[error("{0}")]
    Malformed(InputError),
    /// Another tenant's key, told apart from a missing one by no one.
    #[error("slot key {} does not exist", shown(key))]
    NotFound { key: String },
}

impl SlotKey {
    /// A key of another tenant is reported exactly like a missing key (NOT_FOUND), so that
    /// a tenant learns nothing about another's keys. Without authentication (`caller` None)
    /// every key of the schema is readable.
    pub fn parse(raw: &str, caller: Option<&Tenant>) -> Result<SlotKey, KeyError> {
        let not_ours = || {
            KeyError::Malformed(InputError::BadParameter {
                name: "key",
                value: shown(raw),
                expected: format!(
                    "must be an ICAE slot key of at most {MAX_KEY_BYTES} bytes, \
                     [namespace:]{SCHEMA}:<fingerprint>:<64 hex digits>[-s<slots>]\
                     [-r<steps>[-t<loss>]], \
                     as Compress returns it"
                ),
            })
        };
        if raw.len() > MAX_KEY_BYTES {
            return Err(not_ours());
        }
        let parts: Vec<&str> = raw.split(':').collect();
        let n = parts.len();
        if !(4..=6).contains(&n) {
            return Err(not_ours());
        }
        let (prefix, [icae, version, fingerprint, digest]) = parts.split_at(n - 4) else {
            return Err(not_ours());
        };
        let hex = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if format!("{icae}:{version}") != SCHEMA || !hex(fingerprint) || !is_content(digest) {
            return Err(not_ours());
        }
        let tenant = prefix.first().and_then(|p| p.strip_prefix(TENANT_PREFIX));
        let namespaces = &prefix[usize::from(tenant.is_some())..];
        if tenant.is_some_and(|t| Tenant::new(t).is_err())
            || namespaces.len() > 1
            || namespaces.iter().any(|ns| !is_name(ns, MAX_NAMESPACE_LEN))
        {
            return Err(not_ours());
        }
        if let Some(caller) = caller {
            if tenant != Some(caller.as_str()) {
                return Err(KeyError::NotFound {
                    key: raw.to_string(),
                });
            }
        }
        Ok(SlotKey {
            key: raw.to_string(),
            fingerprint: fingerprint.to_string(),
            // is_content checked that the content starts with the 64 hex digits.
            token_digest: digest[..64].to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use icae_core::slots::token_digest;

    use super::*;

    fn slot_key(scope: &KeyScope, fingerprint: &str, token_ids: &[u32]) -> String {
        super::slot_key(scope, fingerprint, &token_digest(token_ids))
    }

    fn scope(tenant: Option<&str>, namespace: &str) -> KeyScope {
        KeyScope {
            tenant: tenant.map(|t| Tenant::new(t).unwrap()),
            namespace: Namespace::parse(namespace).unwrap(),
        }
    }

    #[test]
    fn keys_depend_on_tokens_fingerprint_namespace_and_tenant() {
        let none = scope(None, "");
        let a = slot_key(&none, "0f", &[1, 2, 3]);
        assert!(a.starts_with("icae:v1:0f:") && a.len() == "icae:v1:0f:".len() + 64);
        assert_eq!(a, slot_key(&none, "0f", &[1, 2, 3]));
        assert_ne!(a, slot_key(&none, "0f", &[1, 2, 4]));
        assert_ne!(a, slot_key(&none, "0e", &[1, 2, 3]));
        assert_eq!(
            slot_key(&scope(None, "team-7"), "0f", &[1, 2, 3]),
            format!("team-7:{a}")
        );
        assert_eq!(
            slot_key(&scope(Some("acme"), "team-7"), "0f", &[1, 2, 3]),
            format!("tenant/acme:team-7:{a}")
        );
    }

    #[test]
    fn keys_we_make_parse_back() {
        for s in [scope(None, ""), scope(None, "n"), scope(Some("acme"), "n")] {
            let key = slot_key(&s, "0f", &[9]);
            let parsed = SlotKey::parse(&key, s.tenant.as_ref()).unwrap();
            assert_eq!(parsed.key, key);
            assert_eq!(parsed.fingerprint, "0f");
        }
    }

    #[test]
    fn another_tenants_key_is_not_found_and_foreign_keys_are_refused() {
        let acme = Tenant::new("acme").unwrap();
        let other = Tenant::new("other").unwrap();
        let key = slot_key(&scope(Some("acme"), ""), "0f", &[9]);
        let err = SlotKey::parse(&key, Some(&other)).unwrap_err();
        assert!(matches!(err, KeyError::NotFound { .. }), "{err}");
        let untenanted = slot_key(&scope(None, "acme"), "0f", &[9]);
        let err = SlotKey::parse(&untenanted, Some(&acme)).unwrap_err();
        assert!(matches!(err, KeyError::NotFound { .. }), "{err}");
        for foreign in [
            "user:42",
            "icae:v1:0f:abc",
            "icae:v2:0f:4636993d3e1da4e9d6b8f87b79e8f7c6d018580d52661950eabc3845c5897a4d",
            "a:b:c:icae:v1:0f:4636993d3e1da4e9d6b8f87b79e8f7c6d018580d52661950eabc3845c5897a4d",
            &"x".repeat(10_000),
        ] {
            let err = SlotKey::parse(foreign, None).unwrap_err().to_string();
            assert!(err.contains("an ICAE slot key"), "{err}");
            assert!(
                err.len() < 600,
                "the key is echoed whole: {} bytes",
                err.len()
            );
        }
    }

    #[test]
    fn refined_keys_name_their_refinement_and_parse_back() {
        let digest = token_digest(&[9]);
        let key = |rate, steps, target| {
            super::slot_key(
                &scope(None, ""),
                "0f",
                &slot_content(&digest, rate, steps, target),
            )
        };
        let plain = key(None, 0, Some(0.5));
        let refined = key(None, 50, None);
        let targeted = key(None, 50, Some(0.05));
        let sparse = key(Some(16), 0, None);
        let sparse_refined = key(Some(16), 50, Some(0.05));
        assert_eq!(plain, format!("icae:v1:0f:{digest}"));
        assert_eq!(refined, format!("{plain}-r50"));
        assert_eq!(targeted, format!("{plain}-r50-t0.05"));
        assert_eq!(sparse, format!("{plain}-s16"));
        assert_eq!(sparse_refined, format!("{plain}-s16-r50-t0.05"));
        for key in [&plain, &refined, &targeted, &sparse, &sparse_refined] {
            let parsed = SlotKey::parse(key, None).unwrap();
            assert_eq!(&parsed.key, key);
            assert_eq!(parsed.token_digest, digest);
        }
        for bad in [
            "-s",
            "-s0",
            "-s016",
            "-s12345",
            "-sx",
            "-s16-",
            "-s16-s16",
            "-r5-s16",
            "-r",
            "-r0",
            "-r07",
            "-r1234567",
            "-rx",
            "-r5-t",
            "-r5-tNaN",
            "-r5-t-1",
            "-r5-t1e3",
            "-t5",
            "-r5-t0.50",
            "x",
        ] {
            let key = format!("{plain}{bad}");
            let err = SlotKey::parse(&key, None).unwrap_err().to_string();
            assert!(err.contains("an ICAE slot key"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_namespaces_are_refused_with_the_rule() {
        for bad in ["a b", "x:y", &"n".repeat(65), "ü", "tenant/x"] {
            let err = Namespace::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("namespace") && err.contains("[A-Za-z0-9_.-]"),
                "{err}"
            );
        }
    }
}
