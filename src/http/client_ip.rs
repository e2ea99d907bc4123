//! Which address a request comes from, believing `X-Forwarded-For` only from trusted proxies.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client address: the socket peer, unless the peer is a trusted proxy; then
    /// the right-most `X-Forwarded-For` entry that is not a trusted proxy. A malformed
    /// entry stops the walk: nothing left of it can be believed, so the last trusted
    /// hop is the answer.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let entries: Vec<&str> = forwarded_for
            .flat_map(|header| header.split(','))
            .map(str::trim)
            .collect();
        let mut nearest = peer;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_entry(entry) else {
                return nearest;
            };
            if !self.contains(ip) {
                return ip;
            }
            nearest = ip;
        }
        nearest
    }
}

/// An `X-Forwarded-For` entry: an IP, optionally `[v6]` or `v4:port`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = entry.parse::<std::net::SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().expect("net")).collect())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let got = trusted.client_ip(ip("203.0.113.9"), ["198.51.100.1"].into_iter());
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn no_trusted_proxies_means_the_peer() {
        let got = TrustedProxies::default().client_ip(ip("127.0.0.1"), ["1.2.3.4"].into_iter());
        assert_eq!(got, ip("127.0.0.1"));
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted_entry() {
        let trusted = proxies(&["10.0.0.0/8", "127.0.0.1/32"]);
        // The client forged 6.6.6.6; the proxy appended the real one, 198.51.100.7.
        let got = trusted.client_ip(
            ip("127.0.0.1"),
            ["6.6.6.6, 198.51.100.7, 10.1.2.3"].into_iter(),
        );
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn several_headers_are_one_list() {
        let trusted = proxies(&["127.0.0.1/32"]);
        let got = trusted.client_ip(ip("127.0.0.1"), ["6.6.6.6", "198.51.100.7"].into_iter());
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn malformed_entry_is_never_trusted() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let got = trusted.client_ip(ip("10.0.0.1"), ["198.51.100.7, not-an-ip"].into_iter());
        assert_eq!(got, ip("10.0.0.1"));
        let got = trusted.client_ip(ip("10.0.0.1"), ["garbage, 10.9.9.9"].into_iter());
        assert_eq!(got, ip("10.9.9.9"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client_ip(ip("10.0.0.1"), ["198.51.100.7:4711"].into_iter()),
            ip("198.51.100.7")
        );
        assert_eq!(
            trusted.client_ip(ip("10.0.0.1"), ["[2001:db8::1]"].into_iter()),
            ip("2001:db8::1")
        );
        assert_eq!(
            trusted.client_ip(ip("::ffff:10.0.0.1"), ["192.0.2.4"].into_iter()),
            ip("192.0.2.4")
        );
    }

    #[test]
    fn all_trusted_gives_the_leftmost() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let got = trusted.client_ip(ip("10.0.0.1"), ["10.0.0.3, 10.0.0.2"].into_iter());
        assert_eq!(got, ip("10.0.0.3"));
    }
}
