//! TOTP (RFC 6238: HMAC-SHA1, 6 digits, 30-second steps) through `totp-rs`, the otpauth URI
//! and its QR code as SVG, and one-time recovery codes. Pure functions: no storage, no I/O.
//! A secret never prints itself.

use rand::TryRngCore;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};
use zeroize::Zeroizing;

pub const STEP_SECONDS: i64 = 30;
const SECRET_BYTES: usize = 20;
const ISSUER: &str = "certdrop";

/// A shared TOTP secret, wiped from memory when dropped.
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(<not shown>)")
    }
}

fn random_bytes(n: usize) -> Zeroizing<Vec<u8>> {
    let mut bytes = Zeroizing::new(vec![0u8; n]);
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source");
    bytes
}

impl TotpSecret {
    pub fn generate() -> Self {
        Self(random_bytes(SECRET_BYTES))
    }

    pub fn from_base32(encoded: &str) -> Option<Self> {
        Secret::Encoded(encoded.trim().to_uppercase())
            .to_bytes()
            .ok()
            .filter(|b| b.len() >= 16)
            .map(|b| Self(Zeroizing::new(b)))
    }

    /// Base32 without padding, as authenticators take it.
    pub fn base32(&self) -> Zeroizing<String> {
        match Secret::Raw(self.0.to_vec()).to_encoded() {
            Secret::Encoded(s) => Zeroizing::new(s),
            Secret::Raw(_) => unreachable!("to_encoded returns an encoded secret"),
        }
    }

    fn totp(&self) -> TOTP {
        // 160-bit secrets always satisfy totp-rs's 128-bit minimum.
        TOTP::new_unchecked(Algorithm::SHA1, 6, 0, STEP_SECONDS as u64, self.0.to_vec())
    }

    pub fn code_at_step(&self, step: i64) -> String {
        self.totp().generate((step.max(0) * STEP_SECONDS) as u64)
    }

    /// The step `code` belongs to when it is the code of now or of one step either side
    /// (clock drift); compared in constant time.
    pub fn matching_step(&self, code: &str, now: i64) -> Option<i64> {
        let code = code.trim();
        let current = now / STEP_SECONDS;
        (current - 1..=current + 1)
            .find(|step| bool::from(self.code_at_step(*step).as_bytes().ct_eq(code.as_bytes())))
    }

    /// `otpauth://totp/certdrop:EMAIL?secret=…&issuer=certdrop` for an authenticator app.
    pub fn otpauth_uri(&self, account: &str) -> Zeroizing<String> {
        let label: String = url::form_urlencoded::byte_serialize(account.as_bytes()).collect();
        Zeroizing::new(format!(
            "otpauth://totp/{ISSUER}:{label}?secret={}&issuer={ISSUER}&algorithm=SHA1&digits=6&period={STEP_SECONDS}",
            self.base32().as_str()
        ))
    }
}

/// The current 30-second step.
pub fn step_of(now: i64) -> i64 {
    now / STEP_SECONDS
}

/// A QR code of `text` as an SVG element, rendered on the server (no script, no image request).
pub fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .quiet_zone(true)
                .build();
            // Inline in HTML: the element only, without the XML declaration.
            svg.find("<svg")
                .map(|at| svg[at..].to_string())
                .unwrap_or_default()
        }
        Err(_) => String::new(),
    }
}

/// Whether `raw` looks like a TOTP code (six digits) rather than a recovery code.
pub fn is_totp_code(raw: &str) -> bool {
    let raw = raw.trim();
    raw.len() == 6 && raw.bytes().all(|b| b.is_ascii_digit())
}

/// Ten recovery codes like `k7q2-m4xd-8ptz` (60 random bits each), shown once.
pub fn recovery_codes() -> Vec<Zeroizing<String>> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    (0..10)
        .map(|_| {
            let bytes = random_bytes(12);
            let chars: String = bytes
                .iter()
                .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
                .collect();
            Zeroizing::new(format!("{}-{}-{}", &chars[..4], &chars[4..8], &chars[8..]))
        })
        .collect()
}

/// A recovery code as typed (any case, spaces or dashes) in its stored form.
pub fn normalize_recovery_code(raw: &str) -> String {
    let compact: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if compact.len() == 12 {
        format!("{}-{}-{}", &compact[..4], &compact[4..8], &compact[8..])
    } else {
        compact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_test_vector() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", T = 59 s: 94287082 (8 digits);
        // the 6-digit code is its last six digits.
        let secret = TotpSecret(Zeroizing::new(b"12345678901234567890".to_vec()));
        assert_eq!(secret.code_at_step(59 / STEP_SECONDS), "287082");
        assert_eq!(secret.matching_step("287082", 59), Some(1));
        assert_eq!(
            secret.matching_step("287082", 59 + 30),
            Some(1),
            "one step late"
        );
        assert_eq!(
            secret.matching_step("287082", 59 + 60),
            None,
            "two steps late"
        );
        assert_eq!(secret.matching_step("000000", 59), None);
    }

    #[test]
    fn secrets_round_trip_through_base32_and_never_print() {
        let secret = TotpSecret::generate();
        let again = TotpSecret::from_base32(&secret.base32()).unwrap();
        assert_eq!(secret.code_at_step(1000), again.code_at_step(1000));
        assert!(!format!("{secret:?}").contains(secret.base32().as_str()));
        let uri = secret.otpauth_uri("ann+ops@example.com");
        assert!(uri.starts_with("otpauth://totp/certdrop:ann%2Bops%40example.com?secret="));
        assert!(qr_svg(&uri).contains("<svg"));
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalised() {
        let codes = recovery_codes();
        assert_eq!(codes.len(), 10);
        assert_eq!(normalize_recovery_code(&codes[0].to_uppercase()), *codes[0]);
        assert_eq!(normalize_recovery_code("ABCD EFGH JKMN"), "abcd-efgh-jkmn");
        let mut unique: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 10);
        assert!(is_totp_code(" 123456 "));
        assert!(!is_totp_code("abcd-efgh-jkmn"));
    }
}
