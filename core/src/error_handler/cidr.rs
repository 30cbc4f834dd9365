//! IPv4/IPv6 CIDR blocks for `when.request.remote_ip.match`, parsed like Go's `net.ParseCIDR`.

use std::net::IpAddr;

/// A network: address bits as `u128` (IPv4 in the low 32 bits) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    v4: bool,
    network: u128,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix`; a bare address is rejected, as Go does.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = s.trim().split_once('/')?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
            return None;
        }
        let prefix: u8 = prefix.parse().ok()?;
        let (v4, bits, width) = match addr.parse::<IpAddr>().ok()? {
            IpAddr::V4(a) => (true, u128::from(u32::from(a)), 32u8),
            IpAddr::V6(a) => (false, u128::from(a), 128u8),
        };
        if prefix > width {
            return None;
        }
        Some(Cidr {
            v4,
            network: bits & mask(prefix, width),
            prefix,
        })
    }

    /// Whether `ip` is inside; IPv4-mapped IPv6 addresses count as IPv4, as in Go.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.v4, ip) {
            (true, IpAddr::V4(a)) => {
                u128::from(u32::from(a)) & mask(self.prefix, 32) == self.network
            }
            (false, IpAddr::V6(a)) => u128::from(a) & mask(self.prefix, 128) == self.network,
            _ => false,
        }
    }
}

fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let all: u128 = if width == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    (all << (width - prefix)) & all
}
