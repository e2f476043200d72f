//! Harness for the end-to-end tests: starts a real `redis-server` and the real service
//! binaries on free loopback ports and stops them by PID.

pub mod client;
pub mod load;
pub mod pki;
pub mod ports;
pub mod processes;
pub mod raw_grpc;
pub mod values;

pub use client::*;
pub use pki::*;
pub use processes::*;
pub use raw_grpc::*;
pub use values::*;
