//! The MQTT username a client certificate stands for (`use_identity_as_username`): the first
//! CN of its subject, as Mosquitto takes it (`X509_NAME_get_index_by_NID(.., NID_commonName,
//! -1)`, the raw string bytes, refused unless valid UTF-8 without NUL).
//! L1: L0 only. Invariant: a bounded walk over DER that returns `None` on anything unexpected;
//! it never panics and never allocates beyond the returned name.

use rustls::pki_types::CertificateDer;

use super::super::PeerIdentity;
use crate::topic::has_forbidden_char;

/// The OID 2.5.4.3 (id-at-commonName), DER-encoded without tag and length.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// An MQTT string's length limit.
const MAX_USERNAME_BYTES: usize = 65_535;

/// The identity of a client whose certificate chain rustls verified (leaf first).
pub(super) fn from_certificates(chain: Option<&[CertificateDer<'_>]>) -> PeerIdentity {
    let cn = chain
        .and_then(|c| c.first())
        .and_then(|leaf| subject_common_name(leaf.as_ref()))
        .and_then(|raw| std::str::from_utf8(raw).ok())
        .filter(|cn| !cn.is_empty() && cn.len() <= MAX_USERNAME_BYTES && !has_forbidden_char(cn));
    match cn {
        Some(cn) => PeerIdentity::CertificateCn(cn.to_owned()),
        None => PeerIdentity::Unusable,
    }
}

/// One DER element: (tag, contents, what follows). Only the definite, short forms X.509 uses.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tag numbers do not occur in the fields walked here
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            rest,
        )
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

/// `element` of an expected tag.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, contents, after) = element(input)?;
    (t == tag).then_some((contents, after))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const INTEGER: u8 = 0x02;
/// `[0] EXPLICIT Version` of tbsCertificate.
const VERSION: u8 = 0xa0;

/// The contents of the first commonName attribute of the certificate's subject.
fn subject_common_name(der: &[u8]) -> Option<&[u8]> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
    //   signature AlgorithmIdentifier, issuer Name, validity, subject Name, ... }, ... }
    let (certificate, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    if let Some((VERSION, _, after)) = element(rest) {
        rest = after;
    }
    let (_, rest) = expect(rest, INTEGER)?;
    let (_, rest) = expect(rest, SEQUENCE)?; // signature algorithm
    let (_, rest) = expect(rest, SEQUENCE)?; // issuer
    let (_, rest) = expect(rest, SEQUENCE)?; // validity
    let (mut rdns, _) = expect(rest, SEQUENCE)?; // subject: SEQUENCE OF RelativeDistinguishedName
    while !rdns.is_empty() {
        let (mut attributes, after) = expect(rdns, SET)?;
        rdns = after;
        while !attributes.is_empty() {
            // AttributeTypeAndValue ::= SEQUENCE { type OID, value ANY (a string type) }
            let (attribute, after) = expect(attributes, SEQUENCE)?;
            attributes = after;
            let (oid, value) = expect(attribute, OID)?;
            if oid == OID_COMMON_NAME {
                let (_, contents, _) = element(value)?;
                return Some(contents);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair};

    fn cert_with(subject: &[(DnType, DnValue)]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            params.distinguished_name.push(t.clone(), v.clone());
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    fn identity(der: &[u8]) -> PeerIdentity {
        from_certificates(Some(&[CertificateDer::from(der.to_vec())]))
    }

    /// issue #9 item 3: the subject CN is the username, whatever comes before it in the subject.
    #[test]
    fn the_subject_cn_is_the_username() {
        let der = cert_with(&[
            (
                DnType::CountryName,
                DnValue::PrintableString("DE".try_into().unwrap()),
            ),
            (DnType::OrganizationName, "Example".into()),
            (DnType::CommonName, "device-42".into()),
        ]);
        assert_eq!(
            identity(&der),
            PeerIdentity::CertificateCn("device-42".into())
        );
        let printable = cert_with(&[(
            DnType::CommonName,
            DnValue::PrintableString("sensor 7".try_into().unwrap()),
        )]);
        assert_eq!(
            identity(&printable),
            PeerIdentity::CertificateCn("sensor 7".into())
        );
        let utf8 = cert_with(&[(DnType::CommonName, "Küche-ß".into())]);
        assert_eq!(
            identity(&utf8),
            PeerIdentity::CertificateCn("Küche-ß".into())
        );
    }

    /// issue #9 item 3: no CN, a CN that is not UTF-8 as stored (BMPString: NUL bytes) or one
    /// with a control character is unusable as a username (Mosquitto refuses these too).
    #[test]
    fn certificates_without_a_usable_cn_are_unusable() {
        let none = cert_with(&[(DnType::OrganizationName, "Example".into())]);
        assert_eq!(identity(&none), PeerIdentity::Unusable);
        let bmp = cert_with(&[(
            DnType::CommonName,
            DnValue::BmpString("ab".try_into().unwrap()),
        )]);
        assert_eq!(identity(&bmp), PeerIdentity::Unusable);
        let control = cert_with(&[(DnType::CommonName, "a\u{1}b".into())]);
        assert_eq!(identity(&control), PeerIdentity::Unusable);
        let empty = cert_with(&[(DnType::CommonName, "".into())]);
        assert_eq!(identity(&empty), PeerIdentity::Unusable);
        assert_eq!(from_certificates(None), PeerIdentity::Unusable);
        assert_eq!(from_certificates(Some(&[])), PeerIdentity::Unusable);
    }

    /// issue #9 item 3 (bad input is normal input): every truncation and every single-byte
    /// corruption of a certificate gives an answer, never a panic.
    #[test]
    fn truncated_or_corrupted_der_never_panics() {
        let der = cert_with(&[(DnType::CommonName, "device-42".into())]);
        for end in 0..der.len() {
            assert_eq!(subject_common_name(&der[..end]), None, "prefix {end}");
        }
        for i in 0..der.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = der.clone();
                bad[i] ^= flip;
                let _ = subject_common_name(&bad);
            }
        }
        // Long-form lengths beyond what the input holds.
        assert_eq!(element(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(element(&[0x30, 0x80]), None);
        assert_eq!(element(&[0x1f, 0x00]), None);
    }
}
