//! The client address behind trusted proxies.
//!
//! `X-Forwarded-For` is a list each proxy appends to, so only its right-hand end can be
//! trusted, and only as far as the proxies that wrote it are ours. The edge starts at the TCP
//! peer; while that hop is a trusted proxy it steps one entry left; the first hop that is not
//! trusted is the client. A header from an untrusted peer is ignored entirely, so a listener
//! cannot claim another country by sending one.

use std::net::IpAddr;
use std::str::FromStr;

/// An IP network such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a network did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an IP network (like 10.0.0.0/8 or 2001:db8::/32)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| bad())?,
                Some(p.parse::<u8>().map_err(|_| bad())?),
            ),
            None => (s.parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The client's address: `peer` itself, unless `peer` is a trusted proxy, in which case
/// `forwarded_for` (an `X-Forwarded-For` value) is walked right to left past trusted hops.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return client;
    }
    let Some(list) = forwarded_for else {
        return client;
    };
    // Bound the walk: a header with thousands of hops is not a real proxy chain.
    for hop in list.rsplit(',').take(32) {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // Garbage where a proxy should have written an address: trust nothing beyond.
            return client;
        };
        client = ip.to_canonical();
        if !is_trusted(client) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.255.1.2")) && !net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.1.1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let cases = [
            // Untrusted peer: its header is ignored.
            ("89.160.20.112", Some("2.125.160.216"), "89.160.20.112"),
            // Trusted peer, one hop.
            ("10.0.0.5", Some("2.125.160.216"), "2.125.160.216"),
            // A client-supplied spoof on the left is skipped: the rightmost untrusted wins.
            (
                "10.0.0.5",
                Some("1.2.3.4, 2.125.160.216, 10.0.0.9"),
                "2.125.160.216",
            ),
            // Trusted peer, no header: the proxy itself.
            ("127.0.0.1", None, "127.0.0.1"),
            // Garbage stops the walk at the last known hop.
            ("10.0.0.5", Some("2.125.160.216, junk"), "10.0.0.5"),
            // Everything trusted: the leftmost hop.
            ("10.0.0.5", Some("10.0.0.7, 10.0.0.6"), "10.0.0.7"),
            // IPv4-mapped peers are normalised.
            ("::ffff:10.0.0.5", Some("2001:218::1"), "2001:218::1"),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(
                client_ip(ip(peer), xff, &trusted),
                ip(want),
                "{peer} {xff:?}"
            );
        }
    }
}
