//! IP networks written as configuration values: `192.0.2.1`, `10.0.0.0/8`, `2001:db8::/32`.
//! L0: std only. Invariant: a parsed `IpNet` never has bits set below its prefix, and an
//! IPv4-mapped IPv6 address is matched as the IPv4 address it carries.

use std::net::IpAddr;

/// An address with a prefix length; a bare address is a /32 (IPv4) or /128 (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `ADDR` or `ADDR/PREFIX`; `None` if it is neither, or the prefix is too long.
    /// Bits below the prefix are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
    pub(crate) fn parse(s: &str) -> Option<IpNet> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        Some(IpNet {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` is in the network.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & keep).into())
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & keep).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// issue #10 item 1: trusted_proxies entries are single addresses or CIDR networks, v4 and
    /// v6; a mapped IPv4 peer matches its IPv4 network; garbage and too-long prefixes refused.
    #[test]
    fn networks_parse_and_match() {
        let lo = IpNet::parse("127.0.0.1").unwrap();
        assert!(lo.contains(ip("127.0.0.1")));
        assert!(lo.contains(ip("::ffff:127.0.0.1")));
        assert!(!lo.contains(ip("127.0.0.2")));
        let ten = IpNet::parse("10.1.2.3/8").unwrap();
        assert_eq!(ten, IpNet::parse("10.0.0.0/8").unwrap());
        assert!(ten.contains(ip("10.255.0.1")));
        assert!(!ten.contains(ip("11.0.0.1")));
        let all4 = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(all4.contains(ip("192.0.2.9")));
        assert!(!all4.contains(ip("2001:db8::1")));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(IpNet::parse("::1").unwrap().contains(ip("::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "host",
            "10.0.0.0/8/8",
            "1.2.3",
        ] {
            assert_eq!(IpNet::parse(bad), None, "{bad:?}");
        }
    }
}
