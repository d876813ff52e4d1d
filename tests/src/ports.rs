//! Loopback ports for the brokers a test starts.
//!
//! A port found by binding port 0 and releasing it comes from the kernel's ephemeral
//! range (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default), the same
//! range every outgoing connection takes its local port from. Between the release and
//! the broker's bind — or while a killed broker is down before its restart on the same
//! port — any client connection in the test process may take that port, and the broker
//! fails with "Address already in use" (seen in CI). So ports here come from below the
//! ephemeral range, where the kernel never hands out ports by itself, each at most once
//! per test process, starting at an offset derived from the process id so test
//! processes running one after another (or side by side) rarely meet.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// First port handed out (above the well-known and most registered services' ports).
const RANGE_START: u32 = 20_000;
/// Ports in the range: it ends at 32_000, below Linux's default ephemeral range.
const RANGE_LEN: u32 = 12_000;

/// How many ports this process has handed out (or skipped because they were taken).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback port no one listens on now and this process has not handed out before;
/// the caller binds it next (a broker's `--listen`, `--inter-broker-listen`, ...).
pub fn reserve() -> u16 {
    let offset = std::process::id().wrapping_mul(7_919) % RANGE_LEN;
    for _ in 0..RANGE_LEN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = RANGE_START + (offset + n) % RANGE_LEN;
        let port = u16::try_from(port).expect("the range is below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free loopback port in {RANGE_START}..{}",
        RANGE_START + RANGE_LEN
    )
}
