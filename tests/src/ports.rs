//! Loopback ports. In-process servers bind port 0 and report what they got; Envoy binds port 0
//! too and the harness asks its admin API, so no port is ever guessed. `free_port` is for the
//! rare case where a number is needed before anything can bind it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A port that was free a moment ago (racy by nature; prefer binding port 0).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local_addr of a bound listener")
        .port()
}

/// `N` ports that were free a moment ago and differ from each other: each is held until all
/// are chosen, so the system cannot hand out one of them twice (as `free_port` called `N`
/// times can: a port released is the next one given).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0"))
        .collect();
    std::array::from_fn(|i| {
        held[i]
            .local_addr()
            .expect("local_addr of a bound listener")
            .port()
    })
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub fn is_listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}
