//! Feeds arbitrary text to the small parsers of narinfo values and keys: `Sig:` signatures,
//! `CA:` content addresses, `NarHash:`-style SHA-256 hashes, public and secret keys and
//! `trusted-public-keys` lists. The first byte picks the parser. Nothing may panic, and each
//! accepted value must print to a form that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tvix_store::narinfo::{
    SigningKey, TrustedKeys, VerifyingKey, format_sha256, format_signature, parse_ca, parse_sha256, parse_signature,
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 6 {
        0 => {
            if let Ok(sig) = parse_signature(s) {
                assert_eq!(format_signature(&sig), s, "a signature is accepted in a non-canonical spelling");
                assert_eq!(parse_signature(&format_signature(&sig)), Ok(sig));
            }
        }
        1 => {
            if let Ok(ca) = parse_ca(s) {
                assert_eq!(ca.digest.len(), ca.kind.digest_len());
                assert_eq!(parse_ca(&ca.to_nix_string()), Ok(ca));
            }
        }
        2 => {
            if let Ok(hash) = parse_sha256(s) {
                assert_eq!(parse_sha256(&format_sha256(&hash)), Ok(hash));
            }
        }
        3 => {
            if let Ok(key) = VerifyingKey::parse(s) {
                let again = VerifyingKey::parse(&key.to_nix_string()).expect("a printed public key is refused");
                assert_eq!(again, key);
            }
        }
        4 => {
            if let Ok(key) = SigningKey::parse(s) {
                let again = SigningKey::parse(&key.to_nix_string()).expect("a printed secret key is refused");
                assert_eq!(again.to_nix_string(), key.to_nix_string());
                assert_eq!(again.verifying_key(), key.verifying_key());
            }
        }
        _ => {
            if let Ok(keys) = TrustedKeys::parse(s) {
                assert_eq!(keys.is_empty(), s.split_whitespace().next().is_none());
            }
        }
    }
});
