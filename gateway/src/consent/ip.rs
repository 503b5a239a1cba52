//! IP policy: what to do with `context.ip` before publishing (keep, truncate or remove).
//!
//! Owns: the IP truncation rule. Must not: find the client address (`http::client_ip` does) or
//! touch the rest of the event.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

/// What to do with `context.ip` before publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpPolicy {
    /// Publish it unchanged.
    #[default]
    Keep,
    /// IPv4: zero the last octet (`203.0.113.42` → `203.0.113.0`). IPv6: zero the last 80 bits,
    /// keeping the /48 routing prefix (`2001:db8:abcd:12::1` → `2001:db8:abcd::`); an
    /// IPv4-mapped IPv6 address is truncated as IPv4 (`::ffff:1.2.3.4` → `::ffff:1.2.3.0`).
    /// Anything that does not parse as an IP is removed: never publish an address we could not
    /// truncate.
    Truncate,
    /// Drop `context.ip`.
    Remove,
}

impl IpPolicy {
    /// The value to publish as `context.ip`, or `None` to leave it out.
    pub fn apply<'a>(&self, ip: &'a str) -> Option<Cow<'a, str>> {
        match self {
            IpPolicy::Keep => Some(Cow::Borrowed(ip)),
            IpPolicy::Remove => None,
            IpPolicy::Truncate => truncate_ip(ip).map(Cow::Owned),
        }
    }
}

fn truncate_ip(ip: &str) -> Option<String> {
    let truncate_v4 = |a: Ipv4Addr| {
        let [a, b, c, _] = a.octets();
        Ipv4Addr::new(a, b, c, 0)
    };
    Some(match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => truncate_v4(a).to_string(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => truncate_v4(v4).to_ipv6_mapped().to_string(),
            None => Ipv6Addr::from(u128::from(a) & !((1u128 << 80) - 1)).to_string(),
        },
    })
}
