//! The first DNS name of a certificate's subjectAltName, read from its DER.
//!
//! webpki lists only the names that are valid DNS names, silently skipping the others
//! (`*.acme`), so "the first DNS name" would become the first *valid* one (`DNS:*.acme,
//! DNS:globex` → `globex`). The certificate has already been verified by rustls; this walks
//! just far enough into it to find the extension:
//! Certificate → tbsCertificate → [3] extensions → subjectAltName (2.5.29.17) →
//! GeneralNames → the first dNSName ([2] IA5String).

/// DER of the subjectAltName extension's OID, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const SEQUENCE: u8 = 0x30;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
/// tbsCertificate's `[3] EXPLICIT Extensions`.
const EXTENSIONS: u8 = 0xa3;
/// GeneralName's `[2] IA5String`.
const DNS_NAME: u8 = 0x82;

/// The first DNS name of the certificate's subjectAltName, as written (None: no such name,
/// or DER this reader does not follow).
pub fn first_dns_name(certificate: &[u8]) -> Option<String> {
    let (certificate, _) = element(certificate, SEQUENCE)?;
    let (tbs, _) = element(certificate, SEQUENCE)?;
    let extensions = children(tbs).find(|(tag, _)| *tag == EXTENSIONS)?.1;
    let (extensions, _) = element(extensions, SEQUENCE)?;
    for (tag, extension) in children(extensions) {
        if tag != SEQUENCE {
            continue;
        }
        let mut parts = children(extension);
        if parts.next() != Some((OID, SUBJECT_ALT_NAME)) {
            continue;
        }
        // The optional `critical` BOOLEAN may come first; the value is the OCTET STRING.
        let value = parts.find(|(tag, _)| *tag == OCTET_STRING)?.1;
        let (names, _) = element(value, SEQUENCE)?;
        let name = children(names).find(|(tag, _)| *tag == DNS_NAME)?.1;
        return String::from_utf8(name.to_vec()).ok();
    }
    None
}

/// The content of the element at the start of `der` if its tag is `tag`, and what follows.
fn element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = next(der)?;
    (found == tag).then_some((content, rest))
}

/// The elements one after another in `der`: (tag, content).
fn children(mut der: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, content, rest) = next(der)?;
        der = rest;
        Some((tag, content))
    })
}

/// One DER element: (tag, content, the bytes after it). Single-byte tags only, as in X.509.
fn next(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, der) = der.split_first()?;
    let (&first, mut der) = der.split_first()?;
    let length = if first < 0x80 {
        first as usize
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || der.len() < count {
            return None;
        }
        let (bytes, rest) = der.split_at(count);
        der = rest;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | b as usize)
    };
    (der.len() >= length).then(|| (tag, &der[..length], &der[length..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal DER "certificate": SEQUENCE { SEQUENCE { INTEGER 1, [3] { SEQUENCE {
    /// SEQUENCE { OID 2.5.29.17, OCTET STRING { SEQUENCE { names } } } } } } }.
    fn certificate_with_names(names: &[(u8, &str)]) -> Vec<u8> {
        fn wrap(tag: u8, content: &[u8]) -> Vec<u8> {
            assert!(content.len() < 0x80 * 256);
            let mut out = vec![tag];
            if content.len() < 0x80 {
                out.push(content.len() as u8);
            } else {
                out.extend([0x82, (content.len() >> 8) as u8, content.len() as u8]);
            }
            out.extend_from_slice(content);
            out
        }
        let general_names: Vec<u8> = names
            .iter()
            .flat_map(|(tag, name)| wrap(*tag, name.as_bytes()))
            .collect();
        let mut extension = wrap(OID, SUBJECT_ALT_NAME);
        extension.extend(wrap(OCTET_STRING, &wrap(SEQUENCE, &general_names)));
        let extensions = wrap(EXTENSIONS, &wrap(SEQUENCE, &wrap(SEQUENCE, &extension)));
        let mut tbs = wrap(0x02, &[1]);
        tbs.extend(extensions);
        wrap(SEQUENCE, &wrap(SEQUENCE, &tbs))
    }

    #[test]
    fn the_first_dns_name_is_taken_even_when_it_is_not_a_valid_host_name() {
        let names = [(DNS_NAME, "*.acme"), (DNS_NAME, "globex")];
        assert_eq!(
            first_dns_name(&certificate_with_names(&names)).as_deref(),
            Some("*.acme")
        );
        // Other kinds of name (an rfc822Name, [1]) before it are passed over.
        let names = [(0x81, "ops@acme.example"), (DNS_NAME, "ACME")];
        assert_eq!(
            first_dns_name(&certificate_with_names(&names)).as_deref(),
            Some("ACME")
        );
        assert_eq!(
            first_dns_name(&certificate_with_names(&[(0x81, "x")])),
            None
        );
        let long = "a".repeat(200);
        assert_eq!(
            first_dns_name(&certificate_with_names(&[(DNS_NAME, &long)])),
            Some(long)
        );
    }

    #[test]
    fn truncated_or_foreign_der_names_nothing() {
        let der = certificate_with_names(&[(DNS_NAME, "acme")]);
        for cut in 0..der.len() {
            assert_eq!(first_dns_name(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(first_dns_name(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
    }
}
