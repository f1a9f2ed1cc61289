//! The PROXY protocol (HAProxy's, versions 1 and 2). A load balancer that passes TCP through
//! without reading it (HAProxy in `mode tcp` with `send-proxy`, AWS's Network Load Balancer,
//! nginx's `stream` module with `proxy_protocol on`) cannot add an `X-Forwarded-For` header
//! to TLS it does not terminate; instead it opens each connection with a header naming the
//! client the connection came from. A listener configured for it reads that header before
//! anything else, and serves the connection as the named client's.
//!
//! [`parse`] is pure and bounded (at most [`MAX_HEADER`] bytes are looked at), so the serving
//! side peeks at the first bytes, parses, and then reads exactly the header's length, leaving
//! the TLS or HTTP bytes behind it in the socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Longest header taken: version 1 lines are at most 107 bytes; version 2 headers are 16
/// bytes, an address block (at most 216, for UNIX sockets) and whatever TLVs the balancer
/// adds (AWS's endpoint ID, a unique ID: tens of bytes each).
pub const MAX_HEADER: usize = 1024;

/// Version 1's longest line, `PROXY` to CRLF, as its specification bounds it.
const V1_MAX: usize = 107;
const V1_START: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A complete header at the start of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// How many bytes it takes; what follows is the client's own.
    pub len: usize,
    /// The client the balancer names. `None` for the balancer's own connections (version 2's
    /// LOCAL, as its health checks send) and for clients that are not IP (version 1's
    /// UNKNOWN, version 2's UNSPEC and UNIX): the peer is then taken as itself.
    pub source: Option<SocketAddr>,
}

/// Why the start of a connection is not a header this listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// Neither signature: a client that reached the listener directly, or a balancer not set
    /// to send the header.
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    /// A version 1 line with no CRLF within its 107 bytes.
    #[error("PROXY protocol v1 line without CRLF in its first 107 bytes")]
    V1TooLong,
    /// A version 1 line that does not read as the specification says.
    #[error("PROXY protocol v1 line: {0}")]
    V1(&'static str),
    /// A version 2 header that does not read as the specification says.
    #[error("PROXY protocol v2 header: {0}")]
    V2(&'static str),
    /// A version 2 header longer than [`MAX_HEADER`].
    #[error("PROXY protocol v2 header of {0} bytes, over the limit of {MAX_HEADER}")]
    TooLong(usize),
}

/// Reads a header from a connection's first bytes: `Ok(None)` while they are a correct
/// beginning of one and more are needed. Looks at no more than [`MAX_HEADER`] bytes.
pub fn parse(bytes: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    if begins(bytes, V2_SIGNATURE) {
        v2(bytes)
    } else if begins(bytes, V1_START) {
        v1(bytes)
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

/// Whether `bytes` and `signature` agree as far as both go (so too few bytes are a maybe).
fn begins(bytes: &[u8], signature: &[u8]) -> bool {
    let n = bytes.len().min(signature.len());
    bytes[..n] == signature[..n]
}

fn v1(bytes: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    use ProxyHeaderError::{V1, V1TooLong};
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if bytes.len() >= V1_MAX {
            Err(V1TooLong)
        } else {
            Ok(None)
        };
    };
    // `end` is past "PROXY " whenever a CRLF was found: the start has no CR in it.
    let line = std::str::from_utf8(&window[V1_START.len()..end]).map_err(|_| V1("not ASCII"))?;
    let len = end + 2;
    let mut fields = line.split(' ');
    let v6 = match fields.next() {
        // The balancer could not tell; the rest of the line says nothing to rely on.
        Some("UNKNOWN") => return Ok(Some(ProxyHeader { len, source: None })),
        Some("TCP4") => false,
        Some("TCP6") => true,
        _ => return Err(V1("the protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let mut next = |what| fields.next().ok_or(V1(what));
    let (source, destination) = (next("no source address")?, next("no destination address")?);
    let (source_port, destination_port) = (next("no source port")?, next("no destination port")?);
    if fields.next().is_some() {
        return Err(V1("more than six fields"));
    }
    let address = |text: &str| -> Result<IpAddr, ProxyHeaderError> {
        if v6 {
            text.parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| V1("an address is not IPv6, as TCP6 says"))
        } else {
            text.parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| V1("an address is not IPv4, as TCP4 says"))
        }
    };
    let ip = address(source)?;
    address(destination)?;
    let source_port = port(source_port).ok_or(V1("the source port is not 0-65535"))?;
    port(destination_port).ok_or(V1("the destination port is not 0-65535"))?;
    Ok(Some(ProxyHeader {
        len,
        source: Some(SocketAddr::new(ip.to_canonical(), source_port)),
    }))
}

/// A version 1 port: decimal digits, no sign and no leading zero.
fn port(text: &str) -> Option<u16> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

fn v2(bytes: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    use ProxyHeaderError::{TooLong, V2};
    let Some(fixed) = bytes.get(..16) else {
        return Ok(None);
    };
    if fixed[12] >> 4 != 2 {
        return Err(V2("the version is not 2"));
    }
    let local = match fixed[12] & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(V2("the command is not LOCAL or PROXY")),
    };
    let (family, transport) = (fixed[13] >> 4, fixed[13] & 0x0f);
    if family > 3 || transport > 2 {
        return Err(V2("unknown address family or transport"));
    }
    let len = 16 + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_HEADER {
        return Err(TooLong(len));
    }
    let Some(block) = bytes.get(16..len) else {
        return Ok(None);
    };
    if local {
        return Ok(Some(ProxyHeader { len, source: None }));
    }
    let source = match (family, transport) {
        // TCP over IPv4: source, destination, source port, destination port.
        (1, 1) => {
            let a = block
                .get(..12)
                .ok_or(V2("the address block is too short for IPv4"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            ))
        }
        // TCP over IPv6: the same, with 16-byte addresses.
        (2, 1) => {
            let a = block
                .get(..36)
                .ok_or(V2("the address block is too short for IPv6"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = IpAddr::V6(Ipv6Addr::from(octets)).to_canonical();
            Some(SocketAddr::new(ip, u16::from_be_bytes([a[32], a[33]])))
        }
        (1 | 2, 2) => return Err(V2("a UDP client's header on a TCP listener")),
        // UNSPEC or UNIX (or no transport given): nothing that places the client.
        _ => None,
    };
    Ok(Some(ProxyHeader { len, source }))
}

/// A listener's PROXY protocol policy: a connection from a peer it trusts (a load balancer's
/// address) must open with a header, whose client it is then served as; any other peer is
/// served as itself and may not send one, so no one but the balancers can name a client.
/// (A region's other edges and clients that reach the listener directly need no header.)
#[derive(Clone)]
pub struct ProxyProtocol {
    trusted: Arc<dyn Fn(IpAddr) -> bool + Send + Sync>,
}

impl ProxyProtocol {
    /// Headers are taken from peers for which `trusted` holds.
    pub fn trusting(trusted: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> Self {
        Self {
            trusted: Arc::new(trusted),
        }
    }

    /// Whether `peer` is a balancer: its connections must open with a header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        (self.trusted)(peer.to_canonical())
    }
}

impl std::fmt::Debug for ProxyProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyProtocol")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    /// Every strict prefix of a complete header asks for more; the whole gives the header
    /// whatever follows it.
    fn complete_only_at_its_end(header: &[u8], expected: Option<SocketAddr>) {
        for n in 0..header.len() {
            assert_eq!(parse(&header[..n]), Ok(None), "{n} bytes of {header:?}");
        }
        let mut with_more = header.to_vec();
        with_more.extend_from_slice(b"\x16\x03\x01 and a ClientHello");
        for bytes in [header, &with_more[..]] {
            assert_eq!(
                parse(bytes),
                Ok(Some(ProxyHeader {
                    len: header.len(),
                    source: expected,
                })),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn version_1_names_the_client() {
        complete_only_at_its_end(
            b"PROXY TCP4 81.2.69.142 10.0.0.1 56324 443\r\n",
            addr("81.2.69.142:56324"),
        );
        complete_only_at_its_end(
            b"PROXY TCP6 2001:218::1 2001:db8::2 65535 443\r\n",
            addr("[2001:218::1]:65535"),
        );
        complete_only_at_its_end(b"PROXY UNKNOWN\r\n", None);
        complete_only_at_its_end(b"PROXY UNKNOWN ffff:f...f:ffff 0 0 0\r\n", None);
        // The widest lines: TCP6 with every field at its widest, and the specification's
        // worst case, UNKNOWN followed by the same, which is the 107 bytes it allows.
        let fields = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        complete_only_at_its_end(
            format!("PROXY TCP6 {fields}").as_bytes(),
            addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
        );
        let widest = format!("PROXY UNKNOWN {fields}");
        assert_eq!(widest.len(), V1_MAX);
        complete_only_at_its_end(widest.as_bytes(), None);
    }

    #[test]
    fn version_1_refuses_what_its_specification_does_not_allow() {
        use ProxyHeaderError::{V1, V1TooLong};
        for (line, why) in [
            (&b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"[..], "protocol"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "destination port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "more than six"),
            (b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "IPv4"),
            (b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n", "IPv6"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "source port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "source port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "source port"),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "more than six"),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1\r\n", "IPv4"),
            (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "IPv4"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n", "ASCII"),
        ] {
            match parse(line) {
                Err(V1(message)) => assert!(message.contains(why), "{line:?}: {message}"),
                other => panic!("{line:?} gave {other:?}"),
            }
        }
        let endless = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
        assert_eq!(parse(&endless[..V1_MAX - 1]), Ok(None));
        assert_eq!(parse(&endless), Err(V1TooLong));
        // A line ended by LF alone is not one.
        let lf = [b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".as_slice(), &[b'x'; 100]].concat();
        assert_eq!(parse(&lf), Err(V1TooLong));
    }

    #[test]
    fn version_2_names_the_client() {
        let mut v4 = vec![81, 2, 69, 142, 10, 0, 0, 1];
        v4.extend_from_slice(&56324u16.to_be_bytes());
        v4.extend_from_slice(&443u16.to_be_bytes());
        complete_only_at_its_end(&v2_header(1, 0x11, &v4), addr("81.2.69.142:56324"));
        // TLVs after the addresses (AWS's endpoint ID here) are passed over.
        let mut tlvs = v4.clone();
        tlvs.extend_from_slice(&[0xea, 0x00, 0x05, 0x01, b'v', b'p', b'c', b'e']);
        complete_only_at_its_end(&v2_header(1, 0x11, &tlvs), addr("81.2.69.142:56324"));

        let mut v6 = "2001:218::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        v6.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&1234u16.to_be_bytes());
        v6.extend_from_slice(&443u16.to_be_bytes());
        complete_only_at_its_end(&v2_header(1, 0x21, &v6), addr("[2001:218::1]:1234"));
        // An IPv4 client an IPv6 balancer names as mapped is the IPv4 client.
        let mut mapped = "::ffff:81.2.69.142"
            .parse::<Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        mapped.extend_from_slice(&v6[16..]);
        complete_only_at_its_end(&v2_header(1, 0x21, &mapped), addr("81.2.69.142:1234"));

        // The balancer's own connection (a health check), addresses or not: the peer itself.
        complete_only_at_its_end(&v2_header(0, 0x00, &[]), None);
        complete_only_at_its_end(&v2_header(0, 0x11, &v4), None);
        // UNSPEC and UNIX: nothing to place the client by.
        complete_only_at_its_end(&v2_header(1, 0x00, &[]), None);
        complete_only_at_its_end(&v2_header(1, 0x31, &[0; 216]), None);
    }

    #[test]
    fn version_2_refuses_what_its_specification_does_not_allow() {
        use ProxyHeaderError::{TooLong, V2};
        let v4 = [1u8; 12];
        let mut wrong_version = v2_header(1, 0x11, &v4);
        wrong_version[12] = 0x11;
        let cases = [
            (wrong_version, "version"),
            (v2_header(2, 0x11, &v4), "command"),
            (v2_header(1, 0x41, &v4), "family"),
            (v2_header(1, 0x13, &v4), "transport"),
            (v2_header(1, 0x11, &v4[..11]), "too short for IPv4"),
            (v2_header(1, 0x21, &v4), "too short for IPv6"),
            (v2_header(1, 0x12, &v4), "UDP"),
        ];
        for (header, why) in cases {
            match parse(&header) {
                Err(V2(message)) => assert!(message.contains(why), "{header:?}: {message}"),
                other => panic!("{header:?} gave {other:?}"),
            }
        }
        // Refused from its length alone, before the rest arrives.
        let long = v2_header(1, 0x11, &[0; MAX_HEADER]);
        assert_eq!(parse(&long[..16]), Err(TooLong(16 + MAX_HEADER)));
        let longest = v2_header(1, 0x11, &[0; MAX_HEADER - 16]);
        assert!(matches!(parse(&longest), Ok(Some(h)) if h.len == MAX_HEADER));
    }

    #[test]
    fn anything_else_is_no_header() {
        for start in [
            &b"\x16\x03\x01\x02\x00\x01"[..],
            b"GET / HTTP/1.1\r\n",
            b"PRI * HTTP/2.0",
            b"proxy TCP4",
            b"\r\n\r\n\0\r\nQUIT!",
        ] {
            assert_eq!(parse(start), Err(ProxyHeaderError::Missing), "{start:?}");
        }
    }

    #[test]
    fn only_trusted_peers_may_send_one() {
        let proxy = ProxyProtocol::trusting(|ip| ip == IpAddr::from([10, 0, 0, 1]));
        assert!(proxy.trusts("10.0.0.1".parse().unwrap()));
        assert!(proxy.trusts("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!proxy.trusts("10.0.0.2".parse().unwrap()));
    }
}
