//! Who a client is, for limits and counting: an IPv4 address, or the IPv6 network
//! of a configured prefix length (one subscriber usually holds a whole /64).

use std::net::{IpAddr, Ipv6Addr};

/// The client's address with every bit past `ipv6_prefix` cleared when it is IPv6
/// (IPv4, and IPv4 mapped into IPv6, are returned as the IPv4 address).
pub fn client_network(client: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

/// A stable text key: `198.51.100.7`, `2001:db8:1:2::/64` (the length only when
/// it is not 128, so a full address reads as itself).
pub fn network_key(client: IpAddr, ipv6_prefix: u8) -> String {
    match client_network(client, ipv6_prefix) {
        IpAddr::V6(v6) if ipv6_prefix < 128 => format!("{v6}/{ipv6_prefix}"),
        ip => ip.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn ipv6_is_cut_to_its_prefix_and_ipv4_is_left_alone() {
        assert_eq!(
            client_network(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_network(ip("2001:db8:1:2:3:4:5:6"), 48),
            ip("2001:db8:1::")
        );
        assert_eq!(client_network(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(client_network(ip("198.51.100.7"), 64), ip("198.51.100.7"));
        assert_eq!(
            client_network(ip("::ffff:198.51.100.7"), 64),
            ip("198.51.100.7")
        );
        assert_eq!(client_network(ip("2001:db8::1"), 0), ip("::"));
    }

    #[test]
    fn keys_name_the_network() {
        assert_eq!(
            network_key(ip("2001:db8:1:2:aaaa::1"), 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(network_key(ip("2001:db8::1"), 128), "2001:db8::1");
        assert_eq!(network_key(ip("203.0.113.9"), 64), "203.0.113.9");
    }
}
