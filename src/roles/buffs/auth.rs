//! Admin bearer tokens: one per line in `buffs.admin_token_file`, so they can be
//! rotated one at a time. Compared in constant time, as SHA-256 digests so token
//! lengths do not leak either.

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::configuration::Secret;

#[derive(Clone)]
pub struct AdminTokens {
    digests: Vec<[u8; 32]>,
}

impl AdminTokens {
    pub fn from_secret(tokens: Option<&Secret>) -> Self {
        let digests = tokens
            .map(|secret| {
                secret
                    .expose()
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(|token| Sha256::digest(token.as_bytes()).into())
                    .collect()
            })
            .unwrap_or_default();
        Self { digests }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `authorization` is `Bearer <one of the tokens>`.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(token) = authorization.and_then(bearer) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every token is compared, whichever matches, so timing says nothing.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, digest| {
                found | digest.ct_eq(&presented)
            })
            .into()
    }
}

fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The one log line fail2ban's `hubbub-auth` filter matches: keep it stable.
pub fn log_failure(client_ip: IpAddr, route: &str) {
    tracing::warn!("authentication failed client_ip={client_ip} route={route}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_listed_token_is_accepted() {
        let tokens = AdminTokens::from_secret(Some(&Secret::new("first\n\n second \n# comment\n")));
        assert!(tokens.allows(Some("Bearer first")));
        assert!(tokens.allows(Some("bearer second")));
        assert!(!tokens.allows(Some("Bearer # comment")));
        assert!(!tokens.allows(Some("Bearer third")));
        assert!(!tokens.allows(Some("Basic first")));
        assert!(!tokens.allows(Some("Bearer ")));
        assert!(!tokens.allows(Some("first")));
        assert!(!tokens.allows(None));
    }

    #[test]
    fn no_tokens_allow_nothing() {
        let tokens = AdminTokens::from_secret(None);
        assert!(tokens.is_empty());
        assert!(!tokens.allows(Some("Bearer ")));
        assert!(!tokens.allows(Some("Bearer x")));
    }
}
