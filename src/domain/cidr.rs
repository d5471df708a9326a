//! IP address ranges: an account's webhook source allow-list (`webhook_source_cidrs` in
//! coffer.toml) and the sidecar's trusted proxies (`--webhook-trusted-proxies`).
//!
//! How a range is written, and what it matches:
//!
//! - `a.b.c.d/n` (n ≤ 32) or an IPv6 address `/n` (n ≤ 128), or a bare address, which is the
//!   one-address range (`/32`, `/128`): Stripe publishes its webhook sources as bare addresses.
//! - The address is read by the standard library, which refuses leading zeros in IPv4 octets
//!   (`010.0.0.1`: some tools read that as octal, others as decimal). The prefix length is
//!   digits only, without a leading zero or a sign.
//! - Host bits must be zero: `10.0.0.1/8` is refused (naming `10.0.0.0/8`) rather than masked,
//!   since a range that says one thing and is enforced as another hides a typo in the one
//!   place that keeps strangers out.
//! - IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack listener reports for an
//!   IPv4 client) are matched as the IPv4 address they carry, so `3.18.12.63/32` admits a
//!   client seen as `::ffff:3.18.12.63`. A range inside `::ffff:0:0/96` is refused: write its
//!   IPv4 form. An IPv6 range matches IPv6 addresses only (`::/0` is not "everything").
//!
//! Matching is `ipnet`'s (already in the tree through hyper-util); parsing is ours, for the
//! stricter rules above.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::Invalid;

/// One range of IP addresses, with its host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = |why: &str| Invalid::new(format!("{s:?} is not an address range: {why}"));
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("expected an IPv4 or IPv6 address, then optionally /prefix-length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                let digits = !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
                match p.parse::<u8>() {
                    Ok(n) if digits && n <= max && (p == "0" || !p.starts_with('0')) => n,
                    _ => return Err(bad(&format!("the prefix length must be 0 to {max}"))),
                }
            }
        };
        let net = IpNet::new(addr, prefix).map_err(|_| bad("bad prefix length"))?;
        if let IpNet::V6(v6) = net
            && v6.prefix_len() >= 96
            && v6.network().to_ipv4_mapped().is_some()
        {
            return Err(bad(
                "an IPv4-mapped IPv6 range; write it as IPv4 (mapped addresses are matched as IPv4)",
            ));
        }
        if net.trunc() != net {
            return Err(bad(&format!(
                "host bits are set; did you mean \"{}\"?",
                net.trunc()
            )));
        }
        Ok(Self(net))
    }

    /// Whether `ip` is in the range; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for Cidr {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A non-empty list of ranges: an address is in it when it is in one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidrs(Vec<Cidr>);

impl Cidrs {
    /// The list of `ranges`; an empty one is refused, since it would admit nothing.
    pub fn new(ranges: Vec<Cidr>) -> Result<Self, Invalid> {
        if ranges.is_empty() {
            return Err(Invalid::new("must list at least one address range"));
        }
        Ok(Self(ranges))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn as_slice(&self) -> &[Cidr] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_are_read_strictly() {
        for (text, shown) in [
            ("3.18.12.63/32", "3.18.12.63/32"),
            ("3.18.12.63", "3.18.12.63/32"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2600:1f18::/32", "2600:1f18::/32"),
            ("2600:1F18::/32", "2600:1f18::/32"),
            ("::1", "::1/128"),
            ("::/0", "::/0"),
            ("2a05:d014:0:0::/64", "2a05:d014::/64"),
        ] {
            assert_eq!(cidr(text).to_string(), shown, "{text}");
        }
        for (bad, why) in [
            ("", "expected an IPv4 or IPv6 address"),
            (" 10.0.0.0/8", "expected an IPv4 or IPv6 address"),
            ("10.0.0.0/8 ", "prefix length must be 0 to 32"),
            ("10.0.0/8", "expected an IPv4 or IPv6 address"),
            ("010.0.0.0/8", "expected an IPv4 or IPv6 address"),
            ("example.com", "expected an IPv4 or IPv6 address"),
            ("10.0.0.0/", "prefix length must be 0 to 32"),
            ("10.0.0.0/33", "prefix length must be 0 to 32"),
            ("10.0.0.0/+8", "prefix length must be 0 to 32"),
            ("10.0.0.0/08", "prefix length must be 0 to 32"),
            ("10.0.0.0/8/8", "prefix length must be 0 to 32"),
            ("2600::/129", "prefix length must be 0 to 128"),
            (
                "10.0.0.1/8",
                "host bits are set; did you mean \"10.0.0.0/8\"?",
            ),
            ("2600:1f18::1/32", "did you mean \"2600:1f18::/32\"?"),
            ("::ffff:10.0.0.0/104", "IPv4-mapped"),
            ("::ffff:3.18.12.63", "IPv4-mapped"),
            ("fe80::1%eth0", "expected an IPv4 or IPv6 address"),
        ] {
            let e = Cidr::parse(bad).expect_err(bad).0;
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(
                e.starts_with(&format!("{bad:?} is not an address range: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn matching_v4_v6_and_mapped_addresses() {
        let v4 = cidr("3.18.12.0/24");
        assert!(v4.contains(ip("3.18.12.63")));
        assert!(v4.contains(ip("3.18.12.255")));
        assert!(!v4.contains(ip("3.18.13.0")));
        // A dual-stack listener's view of an IPv4 client.
        assert!(v4.contains(ip("::ffff:3.18.12.63")));
        assert!(!v4.contains(ip("::ffff:3.18.13.1")));
        // IPv4-compatible (deprecated, ::a.b.c.d) is not mapped: an IPv6 address.
        assert!(!v4.contains(ip("::3.18.12.63")));

        let v6 = cidr("2600:1f18::/32");
        assert!(v6.contains(ip("2600:1f18::1")));
        assert!(v6.contains(ip("2600:1f18:ffff::1")));
        assert!(!v6.contains(ip("2600:1f19::1")));
        assert!(!v6.contains(ip("3.18.12.63")));

        let all_v6 = cidr("::/0");
        assert!(all_v6.contains(ip("::1")));
        assert!(!all_v6.contains(ip("127.0.0.1")));
        assert!(!all_v6.contains(ip("::ffff:127.0.0.1")), "mapped is IPv4");
        assert!(cidr("0.0.0.0/0").contains(ip("::ffff:127.0.0.1")));

        let one = cidr("127.0.0.1");
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
    }

    #[test]
    fn a_list_is_never_empty_and_admits_any_of_its_ranges() {
        assert!(Cidrs::new(Vec::new()).is_err());
        let list = Cidrs::new(vec![cidr("10.0.0.0/8"), cidr("2600:1f18::/32")]).unwrap();
        assert!(list.contains(ip("10.1.2.3")));
        assert!(list.contains(ip("2600:1f18::5")));
        assert!(!list.contains(ip("11.0.0.1")));
        assert_eq!(list.as_slice().len(), 2);
    }
}
