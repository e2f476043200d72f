//! Loopback ports for the processes under test.
//!
//! A port from `bind(127.0.0.1:0)` is closed again before the service binds it, and in the
//! meantime the kernel may hand it out again: to another test of the same binary asking for
//! a free port, or as the local port of any outgoing connection (both come from the
//! ephemeral range). A service then fails with "Address already in use" (seen in CI). So
//! ports are taken below the ephemeral range, where outgoing connections never land, and
//! never twice in one process.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The lowest port handed out; below it are well-known and commonly configured ports.
const LOWEST: u16 = 10_000;

/// A TCP port on 127.0.0.1 that was free when asked, lies below the kernel's ephemeral
/// range and was not returned before by this process.
pub fn free_port() -> u16 {
    static TRIED: AtomicU32 = AtomicU32::new(0);
    let highest = ephemeral_range_start().saturating_sub(1);
    if highest <= LOWEST {
        // No room below the ephemeral range on this machine: let the kernel choose.
        return kernel_chosen_port();
    }
    let span = u32::from(highest - LOWEST) + 1;
    // Start where this process's id points, so that test binaries run side by side (two
    // checkouts on one machine) rarely walk the same ports.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let offset = (start + TRIED.fetch_add(1, Ordering::Relaxed)) % span;
        let port = LOWEST + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOWEST}..={highest}");
}

/// The first port of the kernel's ephemeral range (Linux default 32768), read once.
fn ephemeral_range_start() -> u16 {
    static START: OnceLock<u16> = OnceLock::new();
    *START.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse().ok())
            .unwrap_or(32_768)
    })
}

fn kernel_chosen_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_bindable_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        let ephemeral = ephemeral_range_start();
        for &port in &ports {
            assert!(
                ephemeral <= LOWEST || (LOWEST..ephemeral).contains(&port),
                "port {port} outside {LOWEST}..{ephemeral}"
            );
            TcpListener::bind(("127.0.0.1", port)).expect("a returned port is free");
        }
    }
}
