//! A PEM scanner for what customers actually paste: CRLF line ends, blank lines, text around
//! blocks (openssl's "Bag Attributes"), RFC 1421 headers (`Proc-Type: 4,ENCRYPTED`) and every
//! label, known or not. Neither rustls-pki-types nor x509-parser reports headers and unknown
//! labels, and their buffers are not zeroized; key blocks here only ever live in `Zeroizing`.

use base64::{Engine, engine::general_purpose::STANDARD};
use zeroize::Zeroizing;

/// One `-----BEGIN LABEL-----` … `-----END LABEL-----` block.
pub struct Block {
    pub label: String,
    /// RFC 1421 header lines (`Name: value`), e.g. `Proc-Type: 4,ENCRYPTED`.
    pub headers: Vec<String>,
    /// The decoded body; `None` when it is not valid base64.
    pub der: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Block {
    pub fn is_legacy_encrypted(&self) -> bool {
        self.headers.iter().any(|h| {
            h.to_ascii_uppercase()
                .replace(' ', "")
                .starts_with("PROC-TYPE:4,ENCRYPTED")
        })
    }
}

/// Every block in `input`, in order. Text outside blocks is ignored.
pub fn blocks(input: &[u8]) -> Vec<Block> {
    let text = String::from_utf8_lossy(input);
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<String>, Zeroizing<String>)> = None;
    for raw in text.split('\n') {
        let line = raw.trim();
        match &mut current {
            None => {
                if let Some(label) = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|rest| rest.strip_suffix("-----"))
                {
                    current = Some((
                        label.trim().to_string(),
                        Vec::new(),
                        Zeroizing::new(String::new()),
                    ));
                }
            }
            Some((label, headers, body)) => {
                if line.starts_with("-----END ") {
                    let der = STANDARD.decode(body.as_bytes()).ok().map(Zeroizing::new);
                    out.push(Block {
                        label: std::mem::take(label),
                        headers: std::mem::take(headers),
                        der,
                    });
                    current = None;
                } else if line.contains(':') && body.is_empty() {
                    headers.push(line.to_string());
                } else {
                    body.extend(line.chars().filter(|c| !c.is_whitespace()));
                }
            }
        }
    }
    out
}

/// PEM text for DER under a label, 64 columns wide.
pub fn encode(label: &str, der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = Zeroizing::new(String::with_capacity(b64.len() + b64.len() / 64 + 64));
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// True when `input` holds at least one PEM block header.
pub fn looks_like_pem(input: &[u8]) -> bool {
    input.windows(11).any(|w| w == b"-----BEGIN ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_blank_lines_bag_attributes_and_headers_are_tolerated() {
        let der = [0x30u8, 0x03, 0x02, 0x01, 0x05];
        let mut text =
            String::from("Bag Attributes\r\n    localKeyID: 01 02 03\r\nsubject=/CN=x\r\n\r\n");
        text.push_str(&encode("CERTIFICATE", &der).replace('\n', "\r\n"));
        // A synthetic legacy-encrypted block (no real key is ever written into the source).
        let label = "RSA PRIVATE KEY";
        text.push_str(&format!(
            "\r\n\r\n-----BEGIN {label}-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nMAMCAQU=\n-----END {label}-----\n"
        ));
        let found = blocks(text.as_bytes());
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].label, "CERTIFICATE");
        assert_eq!(
            found[0].der.as_deref().map(|d| d.as_slice()),
            Some(&der[..])
        );
        assert!(!found[0].is_legacy_encrypted());
        assert_eq!(found[1].label, "RSA PRIVATE KEY");
        assert!(found[1].is_legacy_encrypted());
    }

    #[test]
    fn encoding_round_trips() {
        let der: Vec<u8> = (0..=255).collect();
        let pem = encode("PRIVATE KEY", &der);
        let found = blocks(pem.as_bytes());
        assert_eq!(found[0].der.as_deref().unwrap().as_slice(), der.as_slice());
    }
}
