//! PCP nonces for the mappings portproxy makes. The CGN ties renewals and deletes to the
//! nonce that created a mapping, so a NAT-PMP client's renewal (which has no nonce) must
//! reach it with the same one: each mapping's nonce is a keyed hash of what identifies it,
//! with a key chosen at random when the daemon starts.

use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher, RandomState};

use crate::mapping::Key;

#[derive(Default)]
pub struct Nonces(RandomState);

impl Nonces {
    /// The nonce for the mapping `key`: the same for the daemon's lifetime.
    pub fn for_key(&self, key: &Key) -> [u8; 12] {
        nonce(|i| self.0.hash_one((key, i)))
    }

    /// The nonce for whatever `seed` names, the same in every process on every run (it
    /// holds a secret if it should be unguessable).
    pub fn derived(seed: impl Hash) -> [u8; 12] {
        nonce(|i| {
            let mut hasher = DefaultHasher::new();
            (&seed, i).hash(&mut hasher);
            hasher.finish()
        })
    }

    /// A nonce for a one-off exchange.
    pub fn random() -> [u8; 12] {
        // Each RandomState has fresh secret SipHash keys; its hash of nothing is unguessable.
        nonce(|_| RandomState::new().build_hasher().finish())
    }
}

fn nonce(mut word: impl FnMut(u8) -> u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&word(0).to_ne_bytes());
    n[8..].copy_from_slice(&word(1).to_ne_bytes()[..4]);
    n
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::proto::Transport;

    #[test]
    fn one_nonce_per_mapping() {
        let nonces = Nonces::default();
        let key = |port| Key {
            host: Ipv4Addr::new(192, 168, 1, 2),
            proto: Transport::Tcp,
            internal_port: port,
        };
        assert_eq!(nonces.for_key(&key(80)), nonces.for_key(&key(80)));
        assert_ne!(nonces.for_key(&key(80)), nonces.for_key(&key(81)));
        assert_ne!(
            nonces.for_key(&key(80)),
            Nonces::default().for_key(&key(80))
        );
        assert_ne!(Nonces::random(), Nonces::random());
        assert_eq!(
            Nonces::derived(("secret", 80)),
            Nonces::derived(("secret", 80))
        );
        assert_ne!(
            Nonces::derived(("secret", 80)),
            Nonces::derived(("other", 80))
        );
    }
}
