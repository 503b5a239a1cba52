//! Tests of the IP policy: truncation of IPv4, IPv6 and IPv4-mapped addresses, and removal of
//! anything that is not an address.
//!
//! Must not: depend on consent parsing: the IP rule stands alone.

use std::borrow::Cow;

use crate::consent::*;

#[test]
fn ip_policy() {
    let t = |ip: &str| IpPolicy::Truncate.apply(ip).map(Cow::into_owned);
    assert_eq!(t("203.0.113.42").as_deref(), Some("203.0.113.0"));
    assert_eq!(t("10.0.0.255").as_deref(), Some("10.0.0.0"));
    assert_eq!(t("2001:db8:abcd:12:34:56:78:9a").as_deref(), Some("2001:db8:abcd::"));
    assert_eq!(t("2001:db8:abcd:ffff::1").as_deref(), Some("2001:db8:abcd::"));
    assert_eq!(t("::1").as_deref(), Some("::"));
    assert_eq!(t("::ffff:198.51.100.7").as_deref(), Some("::ffff:198.51.100.0"));
    for garbage in ["", "garbage", "1.2.3", "1.2.3.4.5", "256.1.1.1", "[::1]", "1.2.3.4:80", "fe80::1%eth0", " 1.2.3.4"]
    {
        assert_eq!(t(garbage), None, "{garbage:?}");
    }
    assert_eq!(IpPolicy::Keep.apply("203.0.113.42").as_deref(), Some("203.0.113.42"));
    assert_eq!(IpPolicy::Keep.apply("garbage").as_deref(), Some("garbage"));
    assert_eq!(IpPolicy::Remove.apply("203.0.113.42"), None);
    assert_eq!(IpPolicy::Remove.apply("::1"), None);
}
