//! Nix's ed25519 keys and narinfo signatures.
//!
//! Key strings are `name:base64(bytes)`: 64 bytes for a secret key (the 32-byte seed followed
//! by the 32-byte public key, libsodium's layout, as `nix-store --generate-binary-cache-key`
//! writes it, without a trailing newline), 32 bytes for a public key. A signature line is
//! `name:base64(64-byte signature)` over [`NarInfo::fingerprint`]. ed25519 is deterministic,
//! so signing the same fingerprint with the same key gives the bytes Nix wrote.
//!
//! Verification uses `verify_strict`: Nix verifies with libsodium's
//! `crypto_sign_verify_detached`, which also rejects non-canonical and small-order points;
//! the lax check would accept signatures Nix refuses.

use std::collections::BTreeMap;
use std::path::Path;

use data_encoding::BASE64;

use super::NarInfo;
use crate::pathinfo::Signature;
use crate::storepath::StorePath;

/// Why a key string or key file is unusable. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No `name:` before the key.
    #[error("key has no `name:` prefix")]
    NoName,
    /// The part after `name:` is not base64.
    #[error("key {0:?}: the part after the name is not base64")]
    Base64(String),
    /// Decoded to the wrong number of bytes.
    #[error("key {name:?}: {len} bytes, expected {expected} for a {what} key")]
    Length { name: String, len: usize, expected: usize, what: &'static str },
    /// A secret key whose second half is not the public key of its seed.
    #[error("secret key {0:?}: its last 32 bytes are not the public key of its seed")]
    Mismatch(String),
    /// 32 bytes that are not a point on the curve.
    #[error("public key {0:?}: not a valid ed25519 public key")]
    InvalidPublic(String),
    /// A key file could not be read.
    #[error("reading key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Why a `Sig:` value is not a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `name:` before the signature.
    #[error("{0:?} is not `<key name>:<base64 signature>`")]
    NoName(String),
    /// The part after the name is not base64 of 64 bytes.
    #[error("signature by {0:?} is not base64 of 64 bytes")]
    Data(String),
}

/// Why a narinfo is to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust<'a> {
    /// A trusted key (this name) signed it.
    Signed(&'a str),
    /// No trusted signature, but its `CA:` gives exactly its store path. The path is only what
    /// it claims once its contents are checked against that content address: the caller must
    /// hash what it downloads, as Nix does when it adds a path with a CA.
    ContentAddressed,
}

/// Why a narinfo did not verify against a set of trusted keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The narinfo has no `Sig:` line.
    #[error("{store_path} has no signatures")]
    Unsigned { store_path: StorePath },
    /// Signed, but by no key we trust (by name).
    #[error(
        "{store_path} is not signed by a trusted key (signed by: {}; trusted: {})",
        signed_by.join(", "),
        trusted.join(", ")
    )]
    Untrusted { store_path: StorePath, signed_by: Vec<String>, trusted: Vec<String> },
    /// Signed by a trusted key name, but the signature does not verify: the narinfo's
    /// StorePath, NarHash, NarSize or References differ from what was signed.
    #[error("{store_path}: the signature by trusted key {} does not verify", keys.join(", "))]
    Invalid { store_path: StorePath, keys: Vec<String> },
    /// Not validly signed, and its `CA:` does not give its store path, so the CA is no reason
    /// to trust it either.
    #[error("{store_path} claims to be content-addressed ({ca}), but that gives {gives}; and {unsigned}")]
    NotContentAddressed { store_path: StorePath, ca: String, gives: String, unsigned: Box<VerifyError> },
}

/// Decodes standard base64 in its one canonical spelling. `data_encoding` also accepts a
/// concatenation of padded pieces (`…ua0=HCA=` for `…ua0cIA==`); Nix 2.8's decoder stops at
/// the first `=`, so to Nix such a value is other, shorter bytes. Found by the `narinfo_keys`
/// fuzz target: a `Sig:` had two spellings.
pub(super) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let bytes = BASE64.decode(s.as_bytes()).ok()?;
    (BASE64.encode(&bytes) == s).then_some(bytes)
}

/// Splits `name:base64` and decodes the base64; the name must be non-empty.
fn split_key(s: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let (name, b64) = s.split_once(':').filter(|(n, _)| !n.is_empty()).ok_or(KeyError::NoName)?;
    let bytes = decode_base64(b64).ok_or_else(|| KeyError::Base64(name.to_string()))?;
    Ok((name, bytes))
}

fn read_key_file(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.display().to_string(), source })
}

/// Parses a `Sig:` value, `<key name>:<base64 of 64 bytes>`.
pub fn parse_signature(s: &str) -> Result<Signature, SignatureError> {
    let (name, b64) =
        s.split_once(':').filter(|(n, _)| !n.is_empty()).ok_or_else(|| SignatureError::NoName(s.to_string()))?;
    let data = decode_base64(b64)
        .and_then(|d| <[u8; 64]>::try_from(d).ok())
        .ok_or_else(|| SignatureError::Data(name.to_string()))?;
    Ok(Signature { name: name.to_string(), data })
}

/// A signature as Nix writes it, `<key name>:<base64>`.
pub fn format_signature(sig: &Signature) -> String {
    format!("{}:{}", sig.name, BASE64.encode(&sig.data))
}

/// A named ed25519 secret key, for signing narinfos.
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("name", &self.name).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses `name:base64(seed ‖ public)`; surrounding whitespace (a trailing newline in a
    /// file written by hand) is ignored.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_key(s.trim())?;
        let pair: [u8; 64] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
            name: name.to_string(),
            len: bytes.len(),
            expected: 64,
            what: "secret",
        })?;
        // Nix never checks the public half; a mismatch would sign with one key and announce
        // another, so it is an error here.
        let key =
            ed25519_dalek::SigningKey::from_keypair_bytes(&pair).map_err(|_| KeyError::Mismatch(name.to_string()))?;
        Ok(Self { name: name.to_string(), key })
    }

    /// Reads a secret key file as `nix-store --generate-binary-cache-key` writes it.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        Self::parse(&read_key_file(path)?)
    }

    /// A key from its name and 32-byte seed (tests, or keys kept elsewhere).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Self {
        Self { name: name.to_string(), key: ed25519_dalek::SigningKey::from_bytes(seed) }
    }

    /// The key name, e.g. `cache.example.org-1`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey { name: self.name.clone(), key: self.key.verifying_key() }
    }

    /// The key in Nix's secret key format, `name:base64(seed ‖ public)`.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, BASE64.encode(&self.key.to_keypair_bytes()))
    }

    /// Signs a fingerprint (see [`NarInfo::fingerprint`]).
    pub fn sign(&self, fingerprint: &str) -> Signature {
        use ed25519_dalek::Signer;
        Signature { name: self.name.clone(), data: self.key.sign(fingerprint.as_bytes()).to_bytes() }
    }

    /// Adds this key's signature to a narinfo, as Nix's `ValidPathInfo::sign` does; an
    /// identical signature already present is not added twice.
    pub fn sign_narinfo(&self, info: &mut NarInfo) {
        let sig = self.sign(&info.fingerprint());
        if !info.signatures.contains(&sig) {
            info.signatures.push(sig);
        }
    }
}

/// A named ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl VerifyingKey {
    /// Parses `name:base64(32 bytes)`, as in `trusted-public-keys`; surrounding whitespace is
    /// ignored.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_key(s.trim())?;
        let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
            name: name.to_string(),
            len: bytes.len(),
            expected: 32,
            what: "public",
        })?;
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| KeyError::InvalidPublic(name.to_string()))?;
        Ok(Self { name: name.to_string(), key })
    }

    /// Reads a public key file as `nix-store --generate-binary-cache-key` writes it.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        Self::parse(&read_key_file(path)?)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key in Nix's public key format.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }

    /// Whether `sig` is this key's signature of `fingerprint`: same key name, and valid.
    pub fn verify(&self, fingerprint: &str, sig: &Signature) -> bool {
        sig.name == self.name
            && self.key.verify_strict(fingerprint.as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig.data)).is_ok()
    }
}

/// The public keys a substituter trusts, by name (Nix's `trusted-public-keys`); a later key
/// with the same name replaces an earlier one, as in Nix's map.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, VerifyingKey>,
}

impl TrustedKeys {
    /// A set of the given keys.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        let mut out = Self::default();
        for k in keys {
            out.insert(k);
        }
        out
    }

    /// Parses a whitespace-separated list of public keys, as in `trusted-public-keys`.
    pub fn parse(list: &str) -> Result<Self, KeyError> {
        Ok(Self::new(list.split_whitespace().map(VerifyingKey::parse).collect::<Result<Vec<_>, _>>()?))
    }

    /// Adds (or replaces, by name) a key.
    pub fn insert(&mut self, key: VerifyingKey) {
        self.keys.insert(key.name.clone(), key);
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks that at least one of the narinfo's signatures is a valid signature by a trusted
    /// key over its fingerprint, and returns that key's name. The error says why not: no
    /// signature at all, none by a trusted key name, or only invalid ones by trusted keys.
    /// Signatures only; [`TrustedKeys::check`] also accepts content-addressed paths, as Nix.
    pub fn verify<'a>(&'a self, info: &NarInfo) -> Result<&'a str, VerifyError> {
        let store_path = || info.store_path.clone();
        if info.signatures.is_empty() {
            return Err(VerifyError::Unsigned { store_path: store_path() });
        }
        let fingerprint = info.fingerprint();
        let mut invalid = Vec::new();
        for sig in &info.signatures {
            if let Some(key) = self.keys.get(&sig.name) {
                if key.verify(&fingerprint, sig) {
                    return Ok(&key.name);
                }
                invalid.push(sig.name.clone());
            }
        }
        if invalid.is_empty() {
            Err(VerifyError::Untrusted {
                store_path: store_path(),
                signed_by: info.signatures.iter().map(|s| s.name.clone()).collect(),
                trusted: self.keys.keys().cloned().collect(),
            })
        } else {
            Err(VerifyError::Invalid { store_path: store_path(), keys: invalid })
        }
    }

    /// Whether to trust a narinfo, with Nix 2.8's rules (`ValidPathInfo::checkSignatures`): a
    /// valid signature by a trusted key, or else a content address that gives exactly its
    /// store path (see [`NarInfo::content_addressed_path`]). A CA that gives another path
    /// makes it an unsigned path like any other; the error then says both.
    pub fn check<'a>(&'a self, info: &NarInfo) -> Result<Trust<'a>, VerifyError> {
        let unsigned = match self.verify(info) {
            Ok(key) => return Ok(Trust::Signed(key)),
            Err(e) => e,
        };
        let (Some(ca), Some(gives)) = (&info.ca, info.content_addressed_path()) else {
            return Err(unsigned);
        };
        match gives {
            Ok(path) if path == info.store_path => Ok(Trust::ContentAddressed),
            other => Err(VerifyError::NotContentAddressed {
                store_path: info.store_path.clone(),
                ca: ca.to_nix_string(),
                gives: match other {
                    Ok(path) => path.to_string(),
                    Err(e) => format!("no path ({e})"),
                },
                unsigned: Box::new(unsigned),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ADDED, BUILT, PUBLIC, SECRET};
    use super::*;

    #[test]
    fn base64_has_one_spelling() {
        // The fuzz finding: the same 64 bytes as two padded pieces.
        let canonical =
            "fuzz-s:hbXiDiDMYQLk/HXOzs6Vi85Fbof7M87xngYVQYEx2aObC7W3Dv4EHJBF+zSsX619atD+rlK+QxDfWZg2ua0cIA==";
        let pieces = "fuzz-s:hbXiDiDMYQLk/HXOzs6Vi85Fbof7M87xngYVQYEx2aObC7W3Dv4EHJBF+zSsX619atD+rlK+QxDfWZg2ua0=HCA=";
        assert_eq!(format_signature(&parse_signature(canonical).unwrap()), canonical);
        assert_eq!(parse_signature(pieces), Err(SignatureError::Data("fuzz-s".into())));
        assert_eq!(decode_base64("AAAA"), Some(vec![0; 3]));
        assert_eq!(decode_base64("AA==AA=="), None);
    }

    #[test]
    fn keys_round_trip_and_match() {
        let sk = SigningKey::parse(SECRET).unwrap();
        assert_eq!(sk.name(), "test-key-1");
        assert_eq!(sk.to_nix_string(), SECRET);
        assert_eq!(sk.verifying_key().to_nix_string(), PUBLIC);
        assert_eq!(VerifyingKey::parse(&format!("{PUBLIC}\n")).unwrap(), sk.verifying_key());
        assert!(!format!("{sk:?}").contains(&SECRET[11..20]), "Debug shows no key material");
    }

    #[test]
    fn our_signatures_are_the_ones_nix_wrote() {
        let sk = SigningKey::parse(SECRET).unwrap();
        for text in [BUILT, ADDED] {
            let info = NarInfo::parse(text).unwrap();
            assert_eq!(sk.sign(&info.fingerprint()), info.signatures[0]);
            let mut unsigned = NarInfo { signatures: vec![], ..info.clone() };
            sk.sign_narinfo(&mut unsigned);
            sk.sign_narinfo(&mut unsigned);
            assert_eq!(unsigned, info);
            assert_eq!(unsigned.render(), text);
        }
    }

    #[test]
    fn verify_says_why() {
        let trusted = TrustedKeys::parse(&format!("other-1:{}  {PUBLIC}", &PUBLIC[11..])).unwrap();
        let info = NarInfo::parse(BUILT).unwrap();
        assert_eq!(trusted.verify(&info), Ok("test-key-1"));

        let unsigned = NarInfo { signatures: vec![], ..info.clone() };
        assert_eq!(trusted.verify(&unsigned), Err(VerifyError::Unsigned { store_path: info.store_path.clone() }));

        let stranger = SigningKey::from_seed("stranger-1", &[7; 32]);
        let mut foreign = unsigned.clone();
        stranger.sign_narinfo(&mut foreign);
        let e = trusted.verify(&foreign).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/nix/store/fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built is not signed by a trusted key \
             (signed by: stranger-1; trusted: other-1, test-key-1)"
        );

        // Every signed field, tampered with, breaks the signature; unsigned fields do not.
        let mut tampered = vec![];
        let mut t = info.clone();
        t.nar_size += 1;
        tampered.push(t);
        let mut t = info.clone();
        t.nar_hash[0] ^= 1;
        tampered.push(t);
        let mut t = info.clone();
        t.references.clear();
        tampered.push(t);
        let mut t = info.clone();
        t.store_path = t.references[0].clone();
        tampered.push(t);
        for t in tampered {
            assert_eq!(
                trusted.verify(&t),
                Err(VerifyError::Invalid { store_path: t.store_path.clone(), keys: vec!["test-key-1".into()] })
            );
        }
        let unsigned_fields = NarInfo { url: "elsewhere".into(), deriver: None, file_size: Some(1), ..info.clone() };
        assert!(trusted.verify(&unsigned_fields).is_ok());

        // A stranger's signature first does not hide a valid trusted one.
        let mut both = foreign.clone();
        both.signatures.push(info.signatures[0].clone());
        assert_eq!(trusted.verify(&both), Ok("test-key-1"));

        // Same name, other key: invalid, not untrusted.
        let impostor = TrustedKeys::new([SigningKey::from_seed("test-key-1", &[1; 32]).verifying_key()]);
        assert!(matches!(impostor.verify(&info), Err(VerifyError::Invalid { .. })));
        assert!(TrustedKeys::default().is_empty());
    }

    #[test]
    fn content_addressed_paths_need_no_signature() {
        let trusted = TrustedKeys::new([SigningKey::from_seed("other-1", &[3; 32]).verifying_key()]);
        let added = NarInfo { signatures: vec![], ..NarInfo::parse(ADDED).unwrap() };
        assert_eq!(trusted.check(&added), Ok(Trust::ContentAddressed));
        assert!(trusted.verify(&added).is_err(), "verify looks at signatures only");

        // Signed by a trusted key: that is the reason given.
        let own = TrustedKeys::parse(PUBLIC).unwrap();
        assert_eq!(own.check(&NarInfo::parse(ADDED).unwrap()), Ok(Trust::Signed("test-key-1")));

        // Input-addressed and unsigned: the signature error as it is.
        let built = NarInfo { signatures: vec![], ..NarInfo::parse(BUILT).unwrap() };
        assert_eq!(trusted.check(&built), Err(VerifyError::Unsigned { store_path: built.store_path.clone() }));

        // A CA that gives another path (here: the built path's name and references) is no
        // reason to trust it, and the message says both why.
        let claiming = NarInfo { ca: added.ca.clone(), ..built.clone() };
        let e = trusted.check(&claiming).unwrap_err();
        assert!(
            matches!(&e, VerifyError::NotContentAddressed { unsigned, .. } if matches!(**unsigned, VerifyError::Unsigned { .. }))
        );
        let message = e.to_string();
        assert!(
            message.starts_with(
                "/nix/store/fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built claims to be content-addressed (fixed:r:sha256:"
            ) && message.ends_with("has no signatures"),
            "{message}"
        );
    }

    #[test]
    fn key_errors() {
        assert!(matches!(SigningKey::parse("no-colon"), Err(KeyError::NoName)));
        assert!(matches!(SigningKey::parse(":AAAA"), Err(KeyError::NoName)));
        assert!(matches!(SigningKey::parse("k:not base64!"), Err(KeyError::Base64(n)) if n == "k"));
        assert!(matches!(SigningKey::parse(PUBLIC), Err(KeyError::Length { len: 32, expected: 64, .. })));
        assert!(matches!(VerifyingKey::parse(SECRET), Err(KeyError::Length { len: 64, expected: 32, .. })));
        // Seed of one key, public half of another.
        let other = SigningKey::from_seed("test-key-1", &[1; 32]).to_nix_string();
        let mixed = format!(
            "test-key-1:{}",
            BASE64.encode(
                &[
                    &BASE64.decode(&other.as_bytes()[11..]).unwrap()[..32],
                    &BASE64.decode(&SECRET.as_bytes()[11..]).unwrap()[32..]
                ]
                .concat()
            )
        );
        assert!(matches!(SigningKey::parse(&mixed), Err(KeyError::Mismatch(_))));
        let e = SigningKey::from_file(Path::new("/nonexistent/key")).unwrap_err();
        assert!(e.to_string().starts_with("reading key file /nonexistent/key: "), "{e}");
        assert!(!KeyError::Mismatch("k".into()).to_string().contains(&SECRET[11..]));
    }

    #[test]
    fn signature_strings() {
        let sig = parse_signature("k:".to_string().as_str()).unwrap_err();
        assert_eq!(sig, SignatureError::Data("k".into()));
        assert_eq!(parse_signature("nocolon"), Err(SignatureError::NoName("nocolon".into())));
        assert_eq!(parse_signature(":AAAA"), Err(SignatureError::NoName(":AAAA".into())));
        let s = format!("k:{}", BASE64.encode(&[9; 64]));
        let parsed = parse_signature(&s).unwrap();
        assert_eq!(parsed, Signature { name: "k".into(), data: [9; 64] });
        assert_eq!(format_signature(&parsed), s);
        assert_eq!(parse_signature(&format!("k:{}", BASE64.encode(&[9; 63]))), Err(SignatureError::Data("k".into())));
    }
}
