//! Shamir's secret sharing over GF(2^8) (the AES field), written small: a secret of any length
//! is split byte by byte into `n` shares of which any `k` give it back and `k − 1` say nothing
//! about it. Arithmetic uses no secret-dependent branches or table lookups.
//!
//! A share travels as text that describes itself, so a mistyped one is refused before it is
//! counted: `cdshare1-SET-K-I-DATA-SUM` — the split it belongs to (`SET`, 8 hex digits), the
//! threshold, its index (1–255), the share bytes in hex, and the first 4 bytes of the SHA-256
//! of everything before it.

use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// The most shares one split makes.
pub const MAX_SHARES: u8 = 16;
const PREFIX: &str = "cdshare1";

/// x · y in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1.
fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    for _ in 0..8 {
        p ^= a & (b & 1).wrapping_neg();
        let carry = (a >> 7).wrapping_neg();
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    p
}

/// 1 / a (a ≠ 0): a^254.
fn inv(a: u8) -> u8 {
    let mut result = 1u8;
    let mut base = a;
    let mut e = 254u8;
    while e > 0 {
        if e & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    result
}

/// One share: its x coordinate and the polynomials' values there, one byte per secret byte.
#[derive(Clone, PartialEq, Eq)]
pub struct Share {
    pub set: u32,
    pub threshold: u8,
    pub index: u8,
    pub data: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Share(set {:08x}, #{} of {})",
            self.set, self.index, self.threshold
        )
    }
}

/// Splits `secret` into `n` shares, any `threshold` of which give it back.
pub fn split(secret: &[u8], threshold: u8, n: u8, set: u32) -> Vec<Share> {
    assert!(
        (1..=n).contains(&threshold) && n <= MAX_SHARES,
        "1 ≤ K ≤ N ≤ {MAX_SHARES}"
    );
    let mut rng = rand::rng();
    let mut shares: Vec<Share> = (1..=n)
        .map(|index| Share {
            set,
            threshold,
            index,
            data: Zeroizing::new(Vec::with_capacity(secret.len())),
        })
        .collect();
    let mut coefficients = Zeroizing::new(vec![0u8; threshold as usize]);
    for &byte in secret {
        coefficients[0] = byte;
        rng.fill_bytes(&mut coefficients[1..]);
        for share in &mut shares {
            // Horner's rule at x = index.
            let y = coefficients
                .iter()
                .rev()
                .fold(0u8, |acc, &c| mul(acc, share.index) ^ c);
            share.data.push(y);
        }
    }
    coefficients.zeroize();
    shares
}

/// The secret at x = 0 of the polynomial through `shares` (Lagrange). The caller checks that
/// they come from one split, are distinct and number at least its threshold; with fewer, or
/// mixed, the answer is some unrelated value, never an error.
pub fn combine(shares: &[Share]) -> Zeroizing<Vec<u8>> {
    let len = shares.first().map_or(0, |s| s.data.len());
    let mut secret = Zeroizing::new(vec![0u8; len]);
    for (i, si) in shares.iter().enumerate() {
        // l_i(0) = Π_{j≠i} x_j / (x_j − x_i); subtraction is xor in GF(2^8).
        let mut basis = 1u8;
        for (j, sj) in shares.iter().enumerate() {
            if i != j {
                basis = mul(basis, mul(sj.index, inv(sj.index ^ si.index)));
            }
        }
        for (out, &y) in secret.iter_mut().zip(si.data.iter()) {
            *out ^= mul(y, basis);
        }
    }
    secret
}

fn checksum(body: &str) -> String {
    hex::encode(&Sha256::digest(body.as_bytes())[..4])
}

impl Share {
    /// The share as its holder keeps it.
    pub fn encode(&self) -> Zeroizing<String> {
        let body = Zeroizing::new(format!(
            "{PREFIX}-{:08x}-{}-{}-{}",
            self.set,
            self.threshold,
            self.index,
            hex::encode(&*self.data)
        ));
        Zeroizing::new(format!("{}-{}", *body, checksum(&body)))
    }

    /// Reads a share typed or pasted by its holder (surrounding space ignored); `None` when it
    /// is not one, or a character is wrong.
    pub fn parse(text: &str) -> Option<Share> {
        let text = text.trim();
        let (body, sum) = text.rsplit_once('-')?;
        let mut parts = body.split('-');
        if parts.next()? != PREFIX {
            return None;
        }
        let set = parts.next().filter(|s| s.len() == 8)?;
        let set = u32::from_str_radix(set, 16).ok()?;
        let threshold: u8 = parts.next()?.parse().ok()?;
        let index: u8 = parts.next()?.parse().ok()?;
        let data = parts.next()?;
        if parts.next().is_some()
            || index == 0
            || !(1..=MAX_SHARES).contains(&threshold)
            || data.is_empty()
            || data.len() > 128
            || !sum.eq_ignore_ascii_case(&checksum(body))
        {
            return None;
        }
        let data = Zeroizing::new(hex::decode(data).ok()?);
        Some(Share {
            set,
            threshold,
            index,
            data,
        })
    }
}

/// A fresh split's id, so shares of different splits are never combined.
pub fn new_set() -> u32 {
    rand::rng().next_u32()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rand::rng().fill_bytes(&mut v);
        v
    }

    /// Every subset of `shares`, as index lists.
    fn subsets(n: usize) -> impl Iterator<Item = Vec<usize>> {
        (0u32..(1 << n)).map(move |mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
    }

    #[test]
    fn field_arithmetic_is_a_field() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "{a}");
            assert_eq!(mul(a, 1), a);
            assert_eq!(mul(a, 0), 0);
        }
        // The AES field's known product: {57} · {83} = {c1}.
        assert_eq!(mul(0x57, 0x83), 0xc1);
        for _ in 0..1000 {
            let [a, b, c] = <[u8; 3]>::try_from(random(3)).unwrap();
            assert_eq!(mul(a, b), mul(b, a));
            assert_eq!(mul(a, b ^ c), mul(a, b) ^ mul(a, c));
            assert_eq!(mul(mul(a, b), c), mul(a, mul(b, c)));
        }
    }

    #[test]
    fn any_k_shares_give_the_secret_back_and_fewer_do_not() {
        for n in 1..=6u8 {
            for k in 1..=n {
                let secret = random(32);
                let shares = split(&secret, k, n, 7);
                for subset in subsets(n as usize) {
                    let chosen: Vec<Share> = subset.iter().map(|&i| shares[i].clone()).collect();
                    let got = combine(&chosen);
                    if chosen.len() >= k as usize {
                        assert_eq!(*got, secret, "k={k} n={n} {subset:?}");
                    } else if !chosen.is_empty() {
                        assert_ne!(*got, secret, "k={k} n={n} {subset:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn fewer_than_k_shares_leave_every_secret_byte_equally_likely() {
        // With k−1 = 1 share of a 2-of-2 split, the share byte is uniform whatever the secret:
        // over many splits of one fixed secret, every value appears.
        let mut seen = [false; 256];
        for _ in 0..5000 {
            let shares = split(&[0x42], 2, 2, 1);
            seen[shares[0].data[0] as usize] = true;
        }
        assert!(seen.iter().filter(|s| **s).count() > 250);
    }

    #[test]
    fn a_share_reads_back_and_any_typo_is_refused() {
        let shares = split(&random(32), 3, 5, 0xdead_beef);
        for share in &shares {
            let text = share.encode();
            assert!(text.starts_with("cdshare1-deadbeef-3-"), "{}", *text);
            assert_eq!(
                Share::parse(&format!("  {}\n", *text)).as_ref(),
                Some(share)
            );
            // Every single-character change is caught.
            for (at, c) in text.char_indices() {
                let other = if c == '0' { '1' } else { '0' };
                let mut typo = text.to_string();
                typo.replace_range(at..at + 1, &other.to_string());
                if typo.eq_ignore_ascii_case(&text) {
                    continue;
                }
                assert!(Share::parse(&typo).is_none(), "{typo}");
            }
            // A missing character too.
            assert!(Share::parse(&text[..text.len() - 1]).is_none());
        }
        assert!(Share::parse("").is_none());
        assert!(Share::parse("cdshare1").is_none());
        assert!(format!("{:?}", shares[0]).starts_with("Share(set deadbeef, #1 of 3)"));
    }
}
