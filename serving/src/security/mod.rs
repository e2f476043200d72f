//! Who may call and how the connection is protected: TLS and mTLS (certificates reloaded
//! when their files change), bearer tokens and the tenants derived from them or from a
//! client certificate, and the flags that configure it all.

pub mod auth;
pub mod auth_tokens;
mod cert_names;
mod file_stamp;
pub mod identity;
pub mod security_args;
pub mod tls;
pub(crate) mod tls_incoming;
