//! The little DER certdrop writes and walks by hand (an RSA public key rebuilt from its private
//! key, OCSP requests and responses): one encoder and a reader of elements that never panics
//! on what a stranger sends.

pub const SEQUENCE: u8 = 0x30;
pub const OCTET_STRING: u8 = 0x04;
pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const OID: u8 = 0x06;
pub const ENUMERATED: u8 = 0x0a;
pub const GENERALIZED_TIME: u8 = 0x18;

/// One element: `tag`, the definite length of `content`, `content`.
pub fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A DER element: its tag, its content, and the whole TLV.
pub type Element<'a> = (u8, &'a [u8], &'a [u8]);

/// One element off the front of `input`, and what follows it.
pub fn tlv(input: &[u8]) -> Option<(Element<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        (
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize),
            rest,
        )
    };
    let (content, after) = rest.split_at_checked(len)?;
    let whole = &input[..input.len() - after.len()];
    Some(((tag, content, whole), after))
}

/// The TLVs inside a constructed value.
pub fn children(mut content: &[u8]) -> Option<Vec<Element<'_>>> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let (element, rest) = tlv(content)?;
        out.push(element);
        content = rest;
    }
    Some(out)
}

/// The content of `input` when it is one TLV of `tag`.
pub fn expect(input: &[u8], tag: u8) -> Option<&[u8]> {
    match tlv(input)? {
        ((t, content, _), rest) if t == tag && rest.is_empty() => Some(content),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_round_trip() {
        for len in [0usize, 5, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; len];
            let encoded = encode(OCTET_STRING, &content);
            let ((tag, inner, whole), rest) = tlv(&encoded).unwrap();
            assert_eq!(
                (tag, inner, whole, rest.len()),
                (OCTET_STRING, &content[..], &encoded[..], 0)
            );
        }
        assert!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(tlv(&[0x30, 0x05, 1]).is_none());
        assert!(tlv(&[]).is_none());
    }
}
