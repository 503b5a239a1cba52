//! Client IP: who sent a request, when it may have come through proxies — the address the
//! per-IP window counts and `context.ip` records.
//!
//! Owns: reading `X-Forwarded-For` or `Forwarded` (RFC 7239) and deciding which entry is the
//! client. Must not: apply limits or policies to the address (access and consent do), or read
//! the config (it is given a [`ClientIpRule`]).
//!
//! Why from the right: each proxy *appends* the address it received the connection from, so
//! only the entries a trusted proxy appended can be believed; everything to their left was
//! written by whoever spoke to that proxy — possibly the client itself. Starting at the peer,
//! we move left while the address we stand on is a trusted proxy; the first address that is
//! not one is the client. An entry that is not an address (garbage, `unknown`, an obfuscated
//! `_node` name) ends the walk at the last trusted hop, which is the best we know.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;
use serde::Deserialize;

/// Which header the trusted proxies write. Only one is read: a proxy that sets
/// `X-Forwarded-For` passes a client's own `Forwarded` header through untouched, so reading
/// both would let the client choose its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, most load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for="[2001:db8::1]:4711"` (RFC 7239; Envoy, some CDNs).
    Forwarded,
}

/// How the client address is found: the proxies to believe and the header they write.
#[derive(Debug, Clone, Default)]
pub struct ClientIpRule {
    /// Peers (and hops) whose forwarding header is believed. Empty: the peer is the client.
    pub trusted: Vec<IpNet>,
    pub header: ForwardedHeader,
}

impl ClientIpRule {
    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub fn resolve(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        let mut current = peer.ip().to_canonical();
        if !self.is_trusted(current) {
            return current;
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        // Several header lines form one list, in order (RFC 9110 §5.3); walk it from the end.
        let lines: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        for line in lines.iter().rev() {
            for element in line.rsplit(',') {
                let hop = match self.header {
                    ForwardedHeader::XForwardedFor => parse_hop(element.trim()),
                    ForwardedHeader::Forwarded => forwarded_for(element).and_then(parse_hop),
                };
                let Some(hop) = hop else { return current };
                current = hop;
                if !self.is_trusted(current) {
                    return current;
                }
            }
        }
        current
    }
}

/// The `for=` value of one `Forwarded` element (`for=…;proto=…;by=…`), unquoted.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| value.trim().trim_matches('"'))
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let inner = rest.split(']').next()?;
        return inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(trusted: &[&str], header: ForwardedHeader) -> ClientIpRule {
        ClientIpRule { trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(), header }
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 5000)
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let h = xff(&["198.51.100.7, 10.0.0.2"]);
        let trusted = rule(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        // 10.0.0.2 is a trusted hop too: the client is the address left of it.
        assert_eq!(trusted.resolve(&h, peer("10.0.0.3")).to_string(), "198.51.100.7");
        assert_eq!(rule(&[], ForwardedHeader::XForwardedFor).resolve(&h, peer("10.0.0.3")).to_string(), "10.0.0.3");
        assert_eq!(trusted.resolve(&h, peer("192.0.2.1")).to_string(), "192.0.2.1");
        assert_eq!(trusted.resolve(&xff(&["garbage"]), peer("10.0.0.2")).to_string(), "10.0.0.2");
    }

    #[test]
    fn the_client_cannot_choose_its_address_by_prepending_entries() {
        // The client sent `X-Forwarded-For: 10.9.9.1`; the trusted proxy appended the address
        // it saw. The right-most untrusted entry wins, whatever the client wrote to its left.
        let r = rule(&["127.0.0.1/32"], ForwardedHeader::XForwardedFor);
        for spoof in ["10.9.9.1", "1.2.3.4, 5.6.7.8", "unknown", ""] {
            let h = xff(&[&format!("{spoof}, 198.51.100.77")]);
            assert_eq!(r.resolve(&h, peer("127.0.0.1")).to_string(), "198.51.100.77", "{spoof}");
        }
        // Header lines are one list: the last line's last entry is the nearest hop.
        let h = xff(&["10.9.9.1", "198.51.100.77"]);
        assert_eq!(r.resolve(&h, peer("127.0.0.1")).to_string(), "198.51.100.77");
        // A chain of trusted proxies is walked through.
        let r = rule(&["127.0.0.1/32", "10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = xff(&["6.6.6.6, 198.51.100.77, 10.0.0.5, 10.0.0.6"]);
        assert_eq!(r.resolve(&h, peer("127.0.0.1")).to_string(), "198.51.100.77");
        // All hops trusted: the left-most is the best we know.
        let h = xff(&["10.0.0.4, 10.0.0.5"]);
        assert_eq!(r.resolve(&h, peer("127.0.0.1")).to_string(), "10.0.0.4");
        // Ports and brackets, as some proxies write them; IPv4-mapped IPv6 is canonical.
        let h = xff(&["[2001:db8::7]:4711"]);
        assert_eq!(r.resolve(&h, peer("127.0.0.1")).to_string(), "2001:db8::7");
        let h = xff(&["198.51.100.9:1234"]);
        assert_eq!(r.resolve(&h, peer("127.0.0.1")).to_string(), "198.51.100.9");
        let h = xff(&["::ffff:198.51.100.10"]);
        assert_eq!(r.resolve(&h, peer("127.0.0.1")).to_string(), "198.51.100.10");
    }

    #[test]
    fn rfc7239_forwarded_header() {
        let r = rule(&["127.0.0.1/32", "10.0.0.0/8"], ForwardedHeader::Forwarded);
        let mut h = HeaderMap::new();
        h.append("forwarded", r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https"#.parse().unwrap());
        h.append("forwarded", "For=10.0.0.9;by=10.0.0.1".parse().unwrap());
        assert_eq!(r.resolve(&h, peer("127.0.0.1")).to_string(), "2001:db8:cafe::17");
        // `unknown` and obfuscated names end the walk at the last trusted hop.
        let mut h = HeaderMap::new();
        h.append("forwarded", "for=6.6.6.6, for=unknown, for=10.0.0.9".parse().unwrap());
        assert_eq!(r.resolve(&h, peer("127.0.0.1")).to_string(), "10.0.0.9");
        let mut h = HeaderMap::new();
        h.append("forwarded", r#"for="198.51.100.3:80""#.parse().unwrap());
        assert_eq!(r.resolve(&h, peer("127.0.0.1")).to_string(), "198.51.100.3");
        // With `forwarded` configured, X-Forwarded-For is not read (and vice versa).
        let h = xff(&["198.51.100.77"]);
        assert_eq!(r.resolve(&h, peer("127.0.0.1")).to_string(), "127.0.0.1");
        let mut h = HeaderMap::new();
        h.append("forwarded", "for=198.51.100.3".parse().unwrap());
        let x = rule(&["127.0.0.1/32"], ForwardedHeader::XForwardedFor);
        assert_eq!(x.resolve(&h, peer("127.0.0.1")).to_string(), "127.0.0.1");
    }
}
