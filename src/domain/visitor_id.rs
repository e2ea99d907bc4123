use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::configuration::Secret;

/// The key that turns client addresses into visitor identities.
#[derive(Clone)]
pub struct VisitorKey(Secret);

impl VisitorKey {
    pub fn new(salt: Secret) -> Self {
        Self(salt)
    }
}

/// A visitor's identity: HMAC-SHA256(salt, client address). Addresses are never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VisitorId([u8; 32]);

impl VisitorId {
    pub fn derive(key: &VisitorKey, client: IpAddr) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.0.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        // The canonical text form, so ::ffff:1.2.3.4 and 1.2.3.4 are one visitor.
        mac.update(client.to_canonical().to_string().as_bytes());
        Self(mac.finalize().into_bytes().into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Which of `shards` total rows this visitor's visits are counted in.
    pub fn shard(&self, shards: i16) -> i16 {
        i16::from(self.0[0]) % shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(salt: &str) -> VisitorKey {
        VisitorKey::new(Secret::new(salt))
    }

    #[test]
    fn same_address_same_visitor_and_salt_matters() {
        let ip: IpAddr = "203.0.113.7".parse().expect("ip");
        assert_eq!(
            VisitorId::derive(&key("a"), ip),
            VisitorId::derive(&key("a"), ip)
        );
        assert_ne!(
            VisitorId::derive(&key("a"), ip),
            VisitorId::derive(&key("b"), ip)
        );
        let other: IpAddr = "203.0.113.8".parse().expect("ip");
        assert_ne!(
            VisitorId::derive(&key("a"), ip),
            VisitorId::derive(&key("a"), other)
        );
    }

    #[test]
    fn mapped_ipv6_is_the_ipv4_visitor() {
        let v4: IpAddr = "198.51.100.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().expect("ip");
        assert_eq!(
            VisitorId::derive(&key("k"), v4),
            VisitorId::derive(&key("k"), mapped)
        );
    }

    #[test]
    fn the_address_is_not_in_the_identity() {
        let ip: IpAddr = "192.0.2.55".parse().expect("ip");
        let id = VisitorId::derive(&key("k"), ip);
        assert!(!id.as_bytes().windows(4).any(|w| w == [192, 0, 2, 55]));
        assert!(id.shard(16) < 16 && id.shard(16) >= 0);
    }
}
