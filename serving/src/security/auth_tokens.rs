//! The bearer-token table of --auth-tokens-file: one `token tenant` per line, `#` comments
//! and blank lines allowed. Only SHA-256 digests of the tokens are kept, and a lookup
//! compares the caller's digest with every entry in constant time, so neither memory nor
//! timing reveals a token. No error message or log line contains a token.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::security::identity::Tenant;

/// Shorter tokens are guessable; generate them with e.g. `openssl rand -hex 32`.
pub const MIN_TOKEN_CHARS: usize = 16;

#[derive(Debug, Error)]
pub enum TokenFileError {
    #[error("cannot read --auth-tokens-file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--auth-tokens-file {path}:{line}: {problem}")]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("--auth-tokens-file {path} holds no `token tenant` line")]
    Empty { path: PathBuf },
}

type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Token digests and the tenant each token names.
pub struct TokenTable {
    entries: Vec<(TokenDigest, Tenant)>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenTable({} tokens)", self.entries.len())
    }
}

impl TokenTable {
    pub fn load(path: &Path) -> Result<TokenTable, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse the file's text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<TokenTable, TokenFileError> {
        let mut entries: Vec<(TokenDigest, Tenant, usize)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let problem = |problem: String| TokenFileError::Line {
                path: path.to_owned(),
                line: number,
                problem,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, tenant] = fields[..] else {
                return Err(problem(format!(
                    "expected `token tenant`, found {} fields",
                    fields.len()
                )));
            };
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(problem(format!(
                    "the token has fewer than {MIN_TOKEN_CHARS} characters"
                )));
            }
            if !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err(problem(
                    "the token may only hold visible ASCII characters (it travels in a header)"
                        .into(),
                ));
            }
            let tenant = Tenant::new(tenant).map_err(|e| problem(format!("tenant: {e}")))?;
            let token_digest = digest(token);
            if let Some((_, _, first)) = entries.iter().find(|(d, _, _)| *d == token_digest) {
                return Err(problem(format!(
                    "the same token is already on line {first}"
                )));
            }
            entries.push((token_digest, tenant, number));
        }
        if entries.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(TokenTable {
            entries: entries.into_iter().map(|(d, t, _)| (d, t)).collect(),
        })
    }

    /// The tenant of `token`, comparing its digest with every entry (no early exit).
    pub fn tenant(&self, token: &str) -> Option<Tenant> {
        let wanted = digest(token);
        let mut found = None;
        for (entry, tenant) in &self.entries {
            if bool::from(entry.ct_eq(&wanted)) {
                found = Some(tenant);
            }
        }
        found.cloned()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaa-token";
    const B: &str = "bbbbbbbbbbbbbbbb-token";

    fn parse(text: &str) -> Result<TokenTable, String> {
        TokenTable::parse(text, Path::new("tokens.txt")).map_err(|e| e.to_string())
    }

    #[test]
    fn tokens_name_their_tenants() {
        let table = parse(&format!(
            "# team tokens\n\n{A} acme\n   {B}\tglobex  # not a comment: refused below\n"
        ));
        // A trailing `#` is a third field, and refused.
        assert!(table.unwrap_err().contains("tokens.txt:4: expected"));
        let table = parse(&format!("# team tokens\n\n{A} acme\n  {B}\tglobex \n")).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table.tenant(A).unwrap().as_str(), "acme");
        assert_eq!(table.tenant(B).unwrap().as_str(), "globex");
        assert_eq!(table.tenant("cccccccccccccccc-token"), None);
        assert_eq!(table.tenant(""), None);
    }

    #[test]
    fn malformed_lines_name_file_and_line_but_never_the_token() {
        let cases = [
            (
                format!("{A}\n"),
                "tokens.txt:1: expected `token tenant`, found 1 fields",
            ),
            (format!("\n{A} acme extra\n"), "tokens.txt:2: expected"),
            (
                "short acme\n".to_string(),
                "tokens.txt:1: the token has fewer than 16",
            ),
            (
                format!("{A} a:b\n"),
                "tokens.txt:1: tenant: a tenant name may only hold",
            ),
            (
                format!("{A} acme\n{A} globex\n"),
                "tokens.txt:2: the same token is already on line 1",
            ),
            (
                "# nothing\n\n".to_string(),
                "tokens.txt holds no `token tenant` line",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
            assert!(!err.contains(A), "{err:?} echoes the token");
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = TokenTable::load(Path::new("/nonexistent/tokens.txt"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read --auth-tokens-file /nonexistent/tokens.txt"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_holds_no_token() {
        let table = parse(&format!("{A} acme\n")).unwrap();
        assert_eq!(format!("{table:?}"), "TokenTable(1 tokens)");
    }
}
