//! Writes a test PKI for tests/interop/interop.sh into DIR (the openssl command line is not
//! assumed there): `ca.crt`, `server.crt`/`server.key` (127.0.0.1 and localhost) and
//! `client.crt`/`client.key` (CN "interop-client"), generated with rcgen.
//!
//!     cargo run --example tls_test_certs -- DIR

#[path = "../tests/common/certs.rs"]
mod certs;

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: tls_test_certs DIR");
        std::process::exit(2);
    };
    let dir = std::path::PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("tls_test_certs: {}: {e}", dir.display());
        std::process::exit(1);
    }
    let ca = certs::Ca::new("brokerd interop CA");
    ca.write(&dir, "ca");
    ca.server("interop-server", 1).write(&dir, "server");
    ca.client(Some("interop-client")).write(&dir, "client");
}
