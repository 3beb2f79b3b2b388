//! Where outbound calls may go. A definition names URLs and hosts, and an answer's links
//! (callback files, recovery links) are followed: without a guard an integration could
//! make the gateway read the cloud metadata service or a host inside the VPC and store the
//! answer for its author to read. The guard applies to the addresses a name resolves to,
//! at connect time, so DNS rebinding does not pass.
//!
//! * Always refused: link-local (169.254.0.0/16 — the EC2/ECS/Lambda metadata and runtime
//!   endpoints — and fe80::/10), the EC2 IPv6 metadata address, unspecified, broadcast and
//!   multicast addresses.
//! * Refused unless listed in the allowed networks (`AllowedOutboundNetworks`): loopback,
//!   private (RFC 1918, fc00::/7) and shared (100.64.0.0/10) ranges.
//! * Everything else (public addresses) is allowed.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// Networks opened on purpose (e.g. a partner reached over a VPN, loopback in the emulator).
    pub allowed: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} is a link-local or metadata address; outbound calls never go there")]
    Never(IpAddr),
    #[error("{0} is a loopback or private address not listed in AllowedOutboundNetworks")]
    NotAllowed(IpAddr),
}

impl OutboundPolicy {
    /// Parses a comma-separated list of networks (`10.1.0.0/16, 127.0.0.1/32`); a bare
    /// address is one host.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut allowed = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("'{item}' is not a network (CIDR) or an address"))?;
            allowed.push(net);
        }
        Ok(Self { allowed })
    }

    /// Whether a call may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let ip = canonical(ip);
        if never(ip) {
            return Err(Refused::Never(ip));
        }
        if restricted(ip) && !self.allowed.iter().any(|net| net.contains(&ip)) {
            return Err(Refused::NotAllowed(ip));
        }
        Ok(())
    }
}

/// An IPv4-mapped IPv6 address is checked as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn never(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            const EC2_METADATA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
            (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_unspecified() || v6.is_multicast() || v6 == EC2_METADATA
        }
    }
}

fn restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || in_shared_space(v4),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// 100.64.0.0/10 (carrier-grade NAT, and where some clouds put internal endpoints).
fn in_shared_space(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    a == 100 && (64..128).contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn metadata_and_link_local_are_never_reached_even_when_listed() {
        let policy = OutboundPolicy::parse("0.0.0.0/0, ::/0").expect("policy");
        for refused in [
            "169.254.169.254",
            "169.254.170.2",
            "fe80::1",
            "fd00:ec2::254",
            "0.0.0.0",
            "224.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(matches!(policy.check(ip(refused)), Err(Refused::Never(_))), "{refused}");
        }
    }

    #[test]
    fn private_and_loopback_need_to_be_listed() {
        let closed = OutboundPolicy::default();
        for private in ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "100.64.0.1", "::1", "fd12::1"] {
            assert!(matches!(closed.check(ip(private)), Err(Refused::NotAllowed(_))), "{private}");
        }
        assert_eq!(closed.check(ip("93.184.216.34")), Ok(()), "a public address");
        let open = OutboundPolicy::parse("127.0.0.0/8, 10.1.0.0/16, ::1").expect("policy");
        assert_eq!(open.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(open.check(ip("10.1.200.7")), Ok(()));
        assert_eq!(open.check(ip("::1")), Ok(()));
        assert!(open.check(ip("10.2.0.1")).is_err(), "only the listed network");
        assert!(OutboundPolicy::parse("10.0.0.0/33").is_err());
        assert!(OutboundPolicy::parse("somewhere").is_err());
    }
}
