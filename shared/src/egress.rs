//! Which IP addresses outgoing calls to tenant-supplied URLs (webhooks) may reach.
//!
//! [`non_public`] is the one classifier used both at enqueue (for URLs whose host is a literal
//! address) and by the worker after DNS resolution. It names the special-purpose range an address
//! falls in, or `None` for an ordinary public address. IPv6 forms that embed an IPv4 address
//! (mapped, compatible, NAT64, 6to4) are judged by the IPv4 address they carry, so
//! `::ffff:127.0.0.1` is loopback like `127.0.0.1`. Operators widen the policy with allow-listed
//! CIDRs in the worker; nothing here reads configuration.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The special-purpose range `ip` belongs to (`"loopback"`, `"private"`, ...), or `None` when it
/// is an ordinary public address that the egress policy lets through.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

/// IPv4 special-purpose ranges (IANA registry, RFC 6890 and successors), most common first.
const V4_RANGES: &[(u32, u8, &str)] = &[
    (0x7f00_0000, 8, "loopback"),             // 127.0.0.0/8
    (0x0a00_0000, 8, "private"),              // 10.0.0.0/8
    (0xac10_0000, 12, "private"),             // 172.16.0.0/12
    (0xc0a8_0000, 16, "private"),             // 192.168.0.0/16
    (0xa9fe_0000, 16, "link-local"),          // 169.254.0.0/16 (cloud metadata lives here)
    (0x6440_0000, 10, "carrier-grade NAT"),   // 100.64.0.0/10
    (0x0000_0000, 8, "unspecified"),          // 0.0.0.0/8 ("this network")
    (0xe000_0000, 4, "multicast"),            // 224.0.0.0/4
    (0xffff_ffff, 32, "broadcast"),           // 255.255.255.255/32
    (0xf000_0000, 4, "reserved"),             // 240.0.0.0/4
    (0xc000_0200, 24, "documentation"),       // 192.0.2.0/24 (TEST-NET-1)
    (0xc633_6400, 24, "documentation"),       // 198.51.100.0/24 (TEST-NET-2)
    (0xcb00_7100, 24, "documentation"),       // 203.0.113.0/24 (TEST-NET-3)
    (0xc000_0000, 24, "protocol assignment"), // 192.0.0.0/24
    (0xc612_0000, 15, "benchmarking"),        // 198.18.0.0/15
    (0xc058_6300, 24, "6to4 relay anycast"),  // 192.88.99.0/24 (deprecated)
];

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|(net, len, _)| prefix_match_v4(bits, *net, *len))
        .map(|(_, _, name)| *name)
}

fn prefix_match_v4(bits: u32, net: u32, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    bits & mask == net
}

/// IPv6 special-purpose ranges that do not embed an IPv4 address.
const V6_RANGES: &[(u128, u8, &str)] = &[
    (0xfe80 << 112, 10, "link-local"),           // fe80::/10
    (0xfc00 << 112, 7, "private"),               // fc00::/7 (unique local)
    (0xfec0 << 112, 10, "site-local"),           // fec0::/10 (deprecated)
    (0xff00 << 112, 8, "multicast"),             // ff00::/8
    (0x2001_0db8 << 96, 32, "documentation"),    // 2001:db8::/32
    (0x3fff << 112, 20, "documentation"),        // 3fff::/20 (RFC 9637)
    (0x0100 << 112, 64, "discard-only"),         // 100::/64
    (0x0064_ff9b_0001 << 80, 48, "NAT64 local"), // 64:ff9b:1::/48
    (0x2001 << 112, 23, "protocol assignment"),  // 2001::/23 (Teredo, benchmarking, ORCHID)
];

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Forms that carry an IPv4 address are as public as that address.
    if let Some(v4) = embedded_v4(bits) {
        return non_public_v4(v4);
    }
    let special = V6_RANGES
        .iter()
        .find(|(net, len, _)| prefix_match_v6(bits, *net, *len))
        .map(|(_, _, name)| *name);
    // Only 2000::/3 is allocated as global unicast; anything else not named above is reserved.
    special.or((!prefix_match_v6(bits, 0x2000 << 112, 3)).then_some("reserved"))
}

/// The IPv4 address inside `::ffff:a.b.c.d` (mapped), `::a.b.c.d` (compatible, deprecated),
/// `64:ff9b::a.b.c.d` (NAT64 well-known prefix) and `2002:aabb:ccdd::/48` (6to4).
fn embedded_v4(bits: u128) -> Option<Ipv4Addr> {
    let low = Ipv4Addr::from(bits as u32);
    if prefix_match_v6(bits, 0xffff << 32, 96)
        || prefix_match_v6(bits, 0, 96)
        || prefix_match_v6(bits, 0x0064_ff9b << 96, 96)
    {
        return Some(low);
    }
    if prefix_match_v6(bits, 0x2002 << 112, 16) {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

fn prefix_match_v6(bits: u128, net: u128, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    bits & mask == net
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(ip: &str) -> Option<&'static str> {
        non_public(ip.parse().unwrap())
    }

    #[test]
    fn every_ipv4_range_is_refused_at_both_ends() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.255.255.255", "loopback"),
            ("10.0.0.0", "private"),
            ("10.255.255.255", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.0.1", "private"),
            ("192.168.255.255", "private"),
            ("169.254.169.254", "link-local"),
            ("169.254.0.0", "link-local"),
            ("100.64.0.0", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("0.0.0.0", "unspecified"),
            ("0.255.255.255", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.255", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.10", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.255", "documentation"),
            ("192.0.0.8", "protocol assignment"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("192.88.99.1", "6to4 relay anycast"),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn public_ipv4_passes_including_neighbours_of_ranges() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "9.255.255.255",   // just below 10/8
            "11.0.0.0",        // just above 10/8
            "172.15.255.255",  // below 172.16/12
            "172.32.0.0",      // above 172.16/12
            "100.63.255.255",  // below CGNAT
            "100.128.0.0",     // above CGNAT
            "169.253.255.255", // below link-local
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255", // below multicast
            "126.255.255.255",
            "128.0.0.0",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    #[test]
    fn every_ipv6_range_is_refused() {
        let cases = [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fc00::1", "private"),
            ("fd12:3456:789a::1", "private"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("2001:db8:ffff::1", "documentation"),
            ("3fff::1", "documentation"),
            ("100::1", "discard-only"),
            ("64:ff9b:1::1", "NAT64 local"),
            ("2001::1", "protocol assignment"),     // Teredo
            ("2001:2::1", "protocol assignment"),   // benchmarking
            ("2001:1ff::1", "protocol assignment"), // end of 2001::/23
            ("fbff:ffff::1", "reserved"),           // outside 2000::/3, below fc00::/7
            ("4000::1", "reserved"),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_carrying_ipv4_are_judged_by_the_ipv4_address() {
        let cases = [
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:7f00:1", Some("loopback")),
            ("::ffff:10.1.2.3", Some("private")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("::ffff:100.64.0.1", Some("carrier-grade NAT")),
            ("::ffff:0.0.0.0", Some("unspecified")),
            ("::ffff:192.0.2.1", Some("documentation")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("loopback")), // IPv4-compatible (deprecated)
            ("::10.0.0.1", Some("private")),
            ("64:ff9b::192.168.1.1", Some("private")), // NAT64 well-known prefix
            ("64:ff9b::7f00:1", Some("loopback")),
            ("64:ff9b::8.8.8.8", None),
            ("2002:7f00:1::", Some("loopback")), // 6to4 of 127.0.0.1
            ("2002:c0a8:101::1", Some("private")),
            ("2002:808:808::1", None),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), expected, "{ip}");
        }
    }

    #[test]
    fn public_ipv6_passes() {
        for ip in [
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001:82a::200e",
            "2001:200::1", // just past 2001::/23
            "2001:db7:ffff::1",
            "2001:db9::1",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }
}
