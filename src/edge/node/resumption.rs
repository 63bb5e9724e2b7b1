//! TLS session tickets (TLS 1.3 PSK tickets and TLS 1.2 tickets) sealed with the pair's shared
//! keys, so a returning visitor resumes on any worker of this node, on the other node of the
//! pair, and after a restart. The keys come sealed from the control plane, are opened in
//! memory only, and are replaced as a whole with each configuration. A ticket is
//! `key name (16) ‖ nonce (12) ‖ AES-256-GCM-SIV(state) ‖ tag (16)`.

use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};

use super::Node;
use crate::{edge::session_keys::KEY_BYTES, vault};

const NAME_LEN: usize = 16;
/// What a client is told a ticket is good for: the shortest a ticket lives (a key issues for
/// 12 hours and is accepted for 12 more).
const LIFETIME_SECONDS: u32 = 12 * 3600;

struct TicketKey {
    name: [u8; NAME_LEN],
    aead: RandomizedNonceKey,
}

/// The keys this node resumes sessions with, newest (the one that issues) first.
#[derive(Default)]
pub struct TicketKeys(Vec<TicketKey>);

impl TicketKeys {
    /// Opens the sealed keys this node can open; one it cannot (sealed before this node was
    /// confirmed) is left out, and resumption then starts again with the next key.
    pub fn open(sealed: &[String], identity: &age::x25519::Identity) -> Self {
        let keys = sealed
            .iter()
            .filter_map(|armored| {
                let secret = vault::open_secret_with(std::slice::from_ref(identity), armored)
                    .map_err(|err| {
                        tracing::warn!(
                            error = format!("{err:#}"),
                            "edge: a session ticket key is not for this node; skipped"
                        );
                    })
                    .ok()?;
                if secret.len() != KEY_BYTES {
                    tracing::warn!("edge: a session ticket key has the wrong size; skipped");
                    return None;
                }
                let (name, key) = secret.split_at(NAME_LEN);
                Some(TicketKey {
                    name: name.try_into().ok()?,
                    aead: RandomizedNonceKey::new(&AES_256_GCM_SIV, key).ok()?,
                })
            })
            .collect();
        Self(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.0.first()?;
        let mut sealed = plain.to_vec();
        let nonce = key
            .aead
            .seal_in_place_append_tag(Aad::from(&key.name), &mut sealed)
            .ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(nonce.as_ref());
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (name, rest) = ticket.split_at_checked(NAME_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let key = self.0.iter().find(|k| k.name == name)?;
        let mut plain = sealed.to_vec();
        let len = key
            .aead
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(&key.name),
                &mut plain,
            )
            .ok()?
            .len();
        plain.truncate(len);
        Some(plain)
    }
}

/// rustls' ticketer for every TLS worker of the node: it reads the keys current at each call.
#[derive(Debug)]
pub struct Ticketer(pub Arc<Node>);

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        !self.0.sites.load().tickets.is_empty()
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECONDS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.sites.load().tickets.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.sites.load().tickets.decrypt(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secrets: &[[u8; KEY_BYTES]], identity: &age::x25519::Identity) -> TicketKeys {
        let recipient = identity.to_public().to_string();
        let sealed: Vec<String> = secrets
            .iter()
            .map(|s| vault::seal_secret_to(std::slice::from_ref(&recipient), s).unwrap())
            .collect();
        TicketKeys::open(&sealed, identity)
    }

    #[test]
    fn a_ticket_opens_with_the_same_key_on_another_node_and_after_rotation() {
        let (one, two) = ([1u8; KEY_BYTES], [2u8; KEY_BYTES]);
        let node_a = keys(&[one], &age::x25519::Identity::generate());
        let ticket = node_a.encrypt(b"session state").unwrap();
        assert_ne!(&ticket[NAME_LEN + NONCE_LEN..], b"session state");

        // The other node of the pair, with its own identity, holds the same key.
        let node_b = keys(&[one], &age::x25519::Identity::generate());
        assert_eq!(node_b.decrypt(&ticket).unwrap(), b"session state");
        // After a rotation the old key still opens; tickets are issued with the new one.
        let rotated = keys(&[two, one], &age::x25519::Identity::generate());
        assert_eq!(rotated.decrypt(&ticket).unwrap(), b"session state");
        assert_eq!(rotated.encrypt(b"x").unwrap()[..NAME_LEN], two[..NAME_LEN]);
        // Once the old key is gone, or the ticket is altered, it opens nowhere.
        let later = keys(&[two], &age::x25519::Identity::generate());
        assert!(later.decrypt(&ticket).is_none());
        let mut forged = ticket.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert!(node_b.decrypt(&forged).is_none());
        assert!(node_b.decrypt(&ticket[..10]).is_none());
    }

    #[test]
    fn a_key_sealed_to_another_node_is_left_out() {
        let other = age::x25519::Identity::generate().to_public().to_string();
        let sealed = vault::seal_secret_to(&[other], &[3u8; KEY_BYTES]).unwrap();
        let keys = TicketKeys::open(&[sealed], &age::x25519::Identity::generate());
        assert!(keys.is_empty());
        assert!(keys.encrypt(b"x").is_none());
    }
}
