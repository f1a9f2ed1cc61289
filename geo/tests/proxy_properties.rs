//! `X-Forwarded-For` as a client or a proxy chain may send it, made up by proptest: whatever
//! the header says, an untrusted peer is the client; otherwise the client is the peer or a
//! hop the header names, the hop right of it all trusted proxies; and any text as a network
//! is parsed or refused, never a panic.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr};

use cadenza_geo::{Cidr, client_ip};
use proptest::prelude::*;

/// The proxies trusted in these tests.
fn trusted() -> Vec<Cidr> {
    ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Addresses inside and outside the trusted networks, IPv4-mapped forms included.
fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::from(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)))),
        any::<u32>().prop_map(|n| IpAddr::from(Ipv4Addr::from(n))),
        any::<u16>().prop_map(|n| format!("2001:db8::{n:x}").parse().unwrap()),
        any::<u32>().prop_map(|n| IpAddr::V6(Ipv4Addr::from(n).to_ipv6_mapped())),
        any::<u128>().prop_map(|n| IpAddr::from(std::net::Ipv6Addr::from(n))),
        Just("127.0.0.1".parse().unwrap()),
    ]
}

/// A hop as written in the header: an address (spaced or not), or something else.
fn hop() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (address(), prop_oneof![Just(""), Just(" ")]).prop_map(|(ip, sp)| format!("{sp}{ip}")),
        1 => Just("unknown".to_owned()),
        1 => "[ -~]{0,12}",
    ]
}

proptest! {
    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right(
        peer in address(),
        hops in prop::collection::vec(hop(), 0..40),
        sent in any::<bool>(),
    ) {
        let trusted = trusted();
        let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
        let header = hops.join(",");
        let client = client_ip(peer, sent.then_some(header.as_str()), &trusted);
        let peer = peer.to_canonical();
        if !is_trusted(peer) || !sent {
            prop_assert_eq!(client, peer);
            return Ok(());
        }
        if client == peer {
            return Ok(());
        }
        // A hop the header names, and every hop right of it a trusted proxy.
        let parsed: Vec<Option<IpAddr>> =
            hops.iter().map(|h| h.trim().parse::<IpAddr>().ok().map(|ip| ip.to_canonical())).collect();
        let at = parsed.iter().rposition(|ip| *ip == Some(client));
        prop_assert!(at.is_some(), "{client} is not in {header:?}");
        let right = &parsed[at.unwrap() + 1..];
        prop_assert!(right.iter().all(|ip| ip.is_some_and(is_trusted)), "{client} from {header:?}");
    }

    #[test]
    fn any_text_as_a_network_parses_or_is_refused(text in "[0-9a-f.:/]{0,45}|[ -~]{0,45}") {
        if let Ok(net) = text.parse::<Cidr>() {
            let addr = text.split('/').next().unwrap().parse::<IpAddr>().unwrap();
            prop_assert!(net.contains(addr), "{text} does not hold its own address");
        }
    }
}
