//! Certificates for the TLS tests, generated in the test with rcgen (ring) and written as PEM
//! files: a CA, server certificates for 127.0.0.1 / localhost, client certificates. Also built
//! into `examples/tls_test_certs.rs`, which writes a set for tests/interop/interop.sh.
#![allow(dead_code)] // each user takes a different subset

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};

/// A certificate authority that signs the other certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
    pub der: Vec<u8>,
}

/// A leaf certificate with its private key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate as a client sees it in the handshake.
    pub der: Vec<u8>,
}

fn name(cn: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "brokerd tests");
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    dn
}

impl Ca {
    /// A CA with an ECDSA P-256 key.
    pub fn new(cn: &str) -> Ca {
        Ca::with_algorithm(cn, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A CA whose key uses `alg` (Ed25519 gives signatures of a fixed size).
    pub fn with_algorithm(cn: &str, alg: &'static SignatureAlgorithm) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = name(Some(cn));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate_for(alg).expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
            der: cert.der().to_vec(),
        }
    }

    fn issue(
        &self,
        sans: &[&str],
        cn: Option<&str>,
        usage: ExtendedKeyUsagePurpose,
        serial: u64,
        alg: &'static SignatureAlgorithm,
    ) -> Leaf {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name = name(cn);
        params.extended_key_usages = vec![usage];
        params.serial_number = Some(serial.into());
        let key = KeyPair::generate_for(alg).expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost (ECDSA P-256).
    pub fn server(&self, cn: &str, serial: u64) -> Leaf {
        self.server_with(cn, serial, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A server certificate whose key uses `alg`.
    pub fn server_with(&self, cn: &str, serial: u64, alg: &'static SignatureAlgorithm) -> Leaf {
        self.issue(
            &["localhost", "127.0.0.1"],
            Some(cn),
            ExtendedKeyUsagePurpose::ServerAuth,
            serial,
            alg,
        )
    }

    /// A client certificate with subject CN `cn` (none if `None`).
    pub fn client(&self, cn: Option<&str>) -> Leaf {
        self.issue(
            &[],
            cn,
            ExtendedKeyUsagePurpose::ClientAuth,
            7,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )
    }
}

impl Leaf {
    /// Writes `NAME.crt` and `NAME.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

impl Ca {
    /// Writes `NAME.crt` into `dir`; returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, &self.pem).expect("write CA certificate");
        path
    }
}
