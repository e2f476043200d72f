//! Who is calling. The transport layer (bearer token or client certificate) establishes the
//! caller's tenant and puts it into the request's extensions; the pipelines derive every
//! Redis key's tenant prefix from it, never from the request body. Without authentication
//! configured there is no tenant (trusted networks only).

use std::fmt;

/// Longest tenant name: it becomes part of every key of that tenant.
pub const MAX_TENANT_CHARS: usize = 64;

/// An authenticated tenant: 1–64 characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant(String);

impl Tenant {
    pub fn new(name: &str) -> Result<Tenant, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty() || name.chars().count() > MAX_TENANT_CHARS {
            return Err(format!(
                "a tenant name has 1 to {MAX_TENANT_CHARS} characters, got {}",
                name.chars().count()
            ));
        }
        if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
            return Err(format!(
                "a tenant name may only hold letters, digits, '.', '_' and '-', got {bad:?}"
            ));
        }
        Ok(Tenant(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The caller's tenant, when authentication established one.
pub fn tenant_of<T>(request: &tonic::Request<T>) -> Option<Tenant> {
    request.extensions().get::<Tenant>().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_checked() {
        assert_eq!(
            Tenant::new("acme-1.prod_x").unwrap().as_str(),
            "acme-1.prod_x"
        );
        assert!(Tenant::new("").unwrap_err().contains("1 to 64"));
        assert!(Tenant::new(&"a".repeat(65)).unwrap_err().contains("got 65"));
        assert!(Tenant::new("a:b").unwrap_err().contains("':'"));
    }

    #[test]
    fn tenant_comes_from_extensions_only() {
        let mut request = tonic::Request::new(());
        assert_eq!(tenant_of(&request), None);
        request
            .extensions_mut()
            .insert(Tenant::new("acme").unwrap());
        assert_eq!(tenant_of(&request).unwrap().as_str(), "acme");
    }
}
