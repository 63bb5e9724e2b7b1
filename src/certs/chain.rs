//! Orders what was uploaded into the chain a TLS server sends: the leaf first, then each
//! issuer in turn; roots (self-signed) and certificates outside that path are dropped.
//! With `bypass`, the chain is kept exactly as uploaded (only the leaf is moved to the front).

use super::x509::CertInfo;

#[derive(Debug, PartialEq, Eq)]
pub struct Built {
    /// Indices into the uploaded certificates, leaf first.
    pub served: Vec<usize>,
    /// The served order differs from the uploaded one (or the leaf was not first).
    pub reordered: bool,
    /// Dropped: roots, unrelated certificates and duplicates.
    pub stripped: Vec<usize>,
}

pub fn build(certs: &[CertInfo], leaf: usize, bypass: bool) -> Built {
    let served = if bypass {
        std::iter::once(leaf)
            .chain((0..certs.len()).filter(|&i| i != leaf))
            .collect()
    } else {
        let mut path = vec![leaf];
        loop {
            let current = &certs[*path.last().expect("path starts with the leaf")];
            if current.self_signed() {
                break;
            }
            let next = (0..certs.len()).find(|&i| {
                !path.contains(&i)
                    && !path
                        .iter()
                        .any(|&p| certs[p].fingerprint == certs[i].fingerprint)
                    && current.issued_by(&certs[i])
            });
            match next {
                Some(i) => path.push(i),
                None => break,
            }
        }
        // A root is a trust anchor's business: clients have it; sending it only costs bytes.
        if path.len() > 1 && certs[*path.last().expect("non-empty")].self_signed() {
            path.pop();
        }
        path
    };
    let reordered = served[0] != 0 || served.windows(2).any(|w| w[0] > w[1]);
    let stripped = (0..certs.len()).filter(|i| !served.contains(i)).collect();
    Built {
        served,
        reordered,
        stripped,
    }
}
