//! OMS v1.0 signature bundles and in-toto statements, as `verity verify` reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static KEY: OnceLock<verity_audit::sign::VerifyingKey> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let key = KEY.get_or_init(|| {
        let (_, public) = verity_audit::sign::keygen().unwrap();
        verity_audit::sign::parse_public_key(&public).unwrap()
    });
    let _ = verity_audit::sign::open_bundle(data, key);
    let _ = verity_audit::sign::parse_statement(data);
});
