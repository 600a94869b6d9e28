//! Nix binary-cache narinfo files: the [`NarInfo`] type, its parser and renderer, the
//! fingerprint Nix signs, ed25519 keys in Nix's format, and conversions from and to
//! [`PathInfo`](crate::pathinfo::PathInfo).
//!
//! This is the common ground of two directions: substituting from a binary cache (parse a
//! fetched narinfo, [`TrustedKeys::verify`] it, [`NarInfo::to_path_info`] once the NAR is
//! ingested) and serving one ([`NarInfo::from_path_info`], [`SigningKey::sign_narinfo`],
//! [`NarInfo::render`]). The formats are those of Nix 2.8, the version Debian 12 ships; the
//! integration test `tests/narinfo_nix.rs` holds every claim here against files Nix wrote.
//!
//! A narinfo as Nix 2.8 writes it (`nix copy --to file://…?secret-key=…`):
//!
//! ```text
//! StorePath: /nix/store/fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built
//! URL: nar/13gwnqr6h0pxvrd45zcflsyc5hlfc4fpm1acsw09mwy5rwdh4pd6.nar.zst
//! Compression: zstd
//! FileHash: sha256:13gwnqr6h0pxvrd45zcflsyc5hlfc4fpm1acsw09mwy5rwdh4pd6
//! FileSize: 130
//! NarHash: sha256:15ik2z29y6f9yff6060qq685pp122lga1z6l0f28k3w4hb1mlvhc
//! NarSize: 168
//! References: apfgshfagzjfqmfqwkxlbw29xm6cpn3n-ref-a
//! Deriver: 5jwlmd82xmq41rj1vvc30zk5igzzwmbb-built.drv
//! Sig: test-key-1:ftxE54/JqnIylKU/E+PUDu14Eud5I6PSgItQpxldq/n+kbPqewzl1+5h4sPMNvVa4KoZzZq2Rqv8HFBAq+j4Bw==
//! ```
//!
//! The module imports only `pathinfo`, `castore` and `storepath`; nothing below it knows
//! narinfos.

mod convert;
mod decompress;
mod keys;
mod parse;
mod signing;

use std::fmt;

use crate::pathinfo::{CaKind, ContentAddress, Signature};
use crate::storepath::{self, InvalidStorePath, StorePath, nixbase32};

pub use convert::{ConvertError, NarFile};
pub use decompress::decompressor;
pub use keys::{KeyError, SignatureError, SigningKey, Trust, TrustedKeys, VerifyError, VerifyingKey};
pub use keys::{format_signature, parse_signature};
pub use parse::{CaError, HashError, ParseError, ParseErrorKind, format_sha256, parse_ca, parse_sha256};
pub use signing::SigningPathInfoService;

/// One narinfo: every field Nix 2.8 reads and writes.
///
/// Lists keep the order they were parsed or built in; [`NarInfo::render`] and
/// [`NarInfo::fingerprint`] sort them the way Nix does (Nix holds both in sets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// `StorePath:` the path this narinfo describes.
    pub store_path: StorePath,
    /// `URL:` where the (compressed) NAR is, relative to the cache root.
    pub url: String,
    /// `Compression:` of the file at `url`; a narinfo without the line means bzip2.
    pub compression: Compression,
    /// `FileHash:` SHA-256 of the file at `url`.
    pub file_hash: Option<[u8; 32]>,
    /// `FileSize:` size of the file at `url`.
    pub file_size: Option<u64>,
    /// `NarHash:` SHA-256 of the uncompressed NAR.
    pub nar_hash: [u8; 32],
    /// `NarSize:` size of the uncompressed NAR; never zero (Nix rejects zero).
    pub nar_size: u64,
    /// `References:` the store paths this one refers to.
    pub references: Vec<StorePath>,
    /// `Deriver:` the derivation, with its `.drv` suffix as in the file. `unknown-deriver`
    /// parses to `None`.
    pub deriver: Option<StorePath>,
    /// `System:` the platform the path was built for; Nix 2.8 reads it, `nix copy` never
    /// writes it.
    pub system: Option<String>,
    /// `Sig:` lines, one per signature.
    pub signatures: Vec<Signature>,
    /// `CA:` the content address, for content-addressed paths.
    pub ca: Option<ContentAddress>,
}

/// The `Compression:` of a NAR file. Nix 2.8 accepts any word here when parsing (it only
/// fails later, when it cannot decompress), so an unknown word is kept, not rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Compression {
    /// `none`: the file is the NAR itself.
    None,
    /// `xz`, the default of `nix copy`.
    Xz,
    /// `bzip2`, what a narinfo without a `Compression:` line means.
    Bzip2,
    /// `zstd`.
    Zstd,
    /// `lzip`.
    Lzip,
    /// `lz4`.
    Lz4,
    /// `br` (brotli).
    Br,
    /// Any other word, as written.
    Other(String),
}

impl Compression {
    /// The word in a narinfo.
    pub fn as_str(&self) -> &str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
            Compression::Zstd => "zstd",
            Compression::Lzip => "lzip",
            Compression::Lz4 => "lz4",
            Compression::Br => "br",
            Compression::Other(s) => s,
        }
    }

    /// Reads a `Compression:` value; the empty value means bzip2, as in Nix.
    pub fn from_word(word: &str) -> Self {
        match word {
            "none" => Compression::None,
            "xz" => Compression::Xz,
            "" | "bzip2" => Compression::Bzip2,
            "zstd" => Compression::Zstd,
            "lzip" => Compression::Lzip,
            "lz4" => Compression::Lz4,
            "br" => Compression::Br,
            other => Compression::Other(other.to_string()),
        }
    }

    /// The suffix Nix 2.8 appends to `.nar` in NAR URLs (`BinaryCacheStore::addToStoreCommon`):
    /// empty for `none` and for words it has no suffix for.
    pub fn nar_extension(&self) -> &'static str {
        match self {
            Compression::Xz => ".xz",
            Compression::Bzip2 => ".bz2",
            Compression::Zstd => ".zst",
            Compression::Lzip => ".lzip",
            Compression::Lz4 => ".lz4",
            Compression::Br => ".br",
            Compression::None | Compression::Other(_) => "",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string Nix signs for a path (`ValidPathInfo::fingerprint`):
/// `1;<store path>;sha256:<nixbase32 NAR hash>;<NAR size>;<references>`, the references as
/// absolute paths, sorted, without duplicates, separated by commas.
pub fn fingerprint(store_path: &StorePath, nar_hash: &[u8; 32], nar_size: u64, references: &[StorePath]) -> String {
    let refs: Vec<String> = sorted_unique(references).into_iter().map(StorePath::to_absolute_path).collect();
    format!("1;{store_path};sha256:{};{nar_size};{}", nixbase32::encode(nar_hash), refs.join(","))
}

/// References in Nix's set order. Nix compares store paths by basename; sorting ours by
/// basename gives the same order because the store directory is common to all.
fn sorted_unique(references: &[StorePath]) -> Vec<&StorePath> {
    let mut refs: Vec<&StorePath> = references.iter().collect();
    refs.sort_by_cached_key(|r| r.to_basename());
    refs.dedup();
    refs
}

impl NarInfo {
    /// Parses a narinfo with Nix 2.8's rules; see [`ParseErrorKind`] for what is rejected.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse::parse(text)
    }

    /// Parses a narinfo given as bytes (an HTTP body); non-UTF-8 input is an error.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, ParseError> {
        let text = std::str::from_utf8(bytes).map_err(|e| ParseError {
            store_path: None,
            line: None,
            kind: Box::new(ParseErrorKind::NotUtf8(e.valid_up_to())),
        })?;
        parse::parse(text)
    }

    /// The string the signatures sign; see [`fingerprint`].
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.store_path, &self.nar_hash, self.nar_size, &self.references)
    }

    /// The store path this narinfo's `CA:` gives its name and references, as Nix 2.8's
    /// `ValidPathInfo::isContentAddressed` computes it (`makeFixedOutputPathFromCA`): a
    /// reference to the path itself is a fixed-output path's self-reference. `None` without a
    /// CA. The path is a content-addressed one exactly when this equals its `StorePath`; an
    /// error (a flat path with references) means it is not.
    pub fn content_addressed_path(&self) -> Option<Result<StorePath, InvalidStorePath>> {
        let ca = self.ca.as_ref()?;
        let name = self.store_path.name();
        let (recursive, algo) = match ca.kind {
            CaKind::TextSha256 => {
                let Ok(sha256) = <[u8; 32]>::try_from(&ca.digest[..]) else {
                    return Some(Err(InvalidStorePath::DigestLen(ca.digest.len())));
                };
                return Some(storepath::text_path(&sha256, name, &self.references));
            }
            CaKind::NarSha256 => (true, "sha256"),
            CaKind::NarSha1 => (true, "sha1"),
            CaKind::NarSha512 => (true, "sha512"),
            CaKind::NarMd5 => (true, "md5"),
            CaKind::FlatSha256 => (false, "sha256"),
            CaKind::FlatSha1 => (false, "sha1"),
            CaKind::FlatSha512 => (false, "sha512"),
            CaKind::FlatMd5 => (false, "md5"),
        };
        let others: Vec<StorePath> = self.references.iter().filter(|r| **r != self.store_path).cloned().collect();
        let self_reference = others.len() != self.references.len();
        Some(storepath::fixed_output_path(recursive, algo, &ca.digest, name, &others, self_reference))
    }

    /// The text Nix 2.8 writes for this narinfo (`NarInfo::to_string`): fields in its order,
    /// references and signatures sorted and deduplicated, `References:` always present (with
    /// a trailing space when empty), `Compression:` always present, optional fields only
    /// when set. Parsing a file Nix wrote and rendering it gives the same bytes.
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.store_path)?;
        writeln!(f, "URL: {}", self.url)?;
        writeln!(f, "Compression: {}", self.compression)?;
        if let Some(h) = &self.file_hash {
            writeln!(f, "FileHash: sha256:{}", nixbase32::encode(h))?;
        }
        if let Some(size) = self.file_size {
            writeln!(f, "FileSize: {size}")?;
        }
        writeln!(f, "NarHash: sha256:{}", nixbase32::encode(&self.nar_hash))?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        let refs: Vec<String> = sorted_unique(&self.references).into_iter().map(StorePath::to_basename).collect();
        writeln!(f, "References: {}", refs.join(" "))?;
        if let Some(d) = &self.deriver {
            writeln!(f, "Deriver: {}", d.to_basename())?;
        }
        if let Some(system) = &self.system {
            writeln!(f, "System: {system}")?;
        }
        // Nix keeps signatures in a set of their `name:base64` strings.
        let mut sigs: Vec<String> = self.signatures.iter().map(format_signature).collect();
        sigs.sort();
        sigs.dedup();
        for sig in sigs {
            writeln!(f, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {}", ca.to_nix_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A narinfo Nix 2.8 wrote (`nix copy --to file://…?compression=zstd&secret-key=…`) for a
    /// derivation output with one reference and a deriver.
    pub const BUILT: &str = "\
StorePath: /nix/store/fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built
URL: nar/13gwnqr6h0pxvrd45zcflsyc5hlfc4fpm1acsw09mwy5rwdh4pd6.nar.zst
Compression: zstd
FileHash: sha256:13gwnqr6h0pxvrd45zcflsyc5hlfc4fpm1acsw09mwy5rwdh4pd6
FileSize: 130
NarHash: sha256:15ik2z29y6f9yff6060qq685pp122lga1z6l0f28k3w4hb1mlvhc
NarSize: 168
References: apfgshfagzjfqmfqwkxlbw29xm6cpn3n-ref-a
Deriver: 5jwlmd82xmq41rj1vvc30zk5igzzwmbb-built.drv
Sig: test-key-1:ftxE54/JqnIylKU/E+PUDu14Eud5I6PSgItQpxldq/n+kbPqewzl1+5h4sPMNvVa4KoZzZq2Rqv8HFBAq+j4Bw==
";

    /// A narinfo Nix 2.8 wrote for `nix-store --add` of a file: no references, a CA.
    pub const ADDED: &str = "\
StorePath: /nix/store/g1nbmnqnx4gpnv32yprf4ql87ccg5035-f1
URL: nar/17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a.nar.xz
Compression: xz
FileHash: sha256:17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a
FileSize: 128
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NarSize: 120
References: 
Sig: test-key-1:o25iicalAqImooF8mxEtiwPVarcjtIvBDOwE2SrutXp//F/dEsCbCiJVViRDSto8e1T5kTgeQDjGJ8/3GcrfDw==
CA: fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
";

    /// The key both were signed with (`nix-store --generate-binary-cache-key test-key-1`);
    /// a throwaway made for these tests.
    pub const SECRET: &str =
        "test-key-1:ac5lkifmPLAVHx4aSya+aDv2Ch++vtl02BE9x4mk2uxDf40vgv+b0g0vyikEww8T9nlik20i4RhKJtrieEbcQQ==";
    pub const PUBLIC: &str = "test-key-1:Q3+NL4L/m9INL8opBMMPE/Z5YpNtIuEYSiba4nhG3EE=";

    #[test]
    fn renders_what_nix_wrote() {
        for text in [BUILT, ADDED] {
            assert_eq!(NarInfo::parse(text).unwrap().render(), text);
        }
    }

    #[test]
    fn render_sorts_and_dedups_like_nix() {
        let mut info = NarInfo::parse(BUILT).unwrap();
        let a = StorePath::from_basename("apfgshfagzjfqmfqwkxlbw29xm6cpn3n-ref-a").unwrap();
        let z = StorePath::from_basename("00000000000000000000000000000000-z").unwrap();
        info.references = vec![a.clone(), z.clone(), a];
        let sig = info.signatures[0].clone();
        info.signatures = vec![sig.clone(), Signature { name: "a-key".into(), data: [0; 64] }, sig];
        let text = info.render();
        assert!(
            text.contains("\nReferences: 00000000000000000000000000000000-z apfgshfagzjfqmfqwkxlbw29xm6cpn3n-ref-a\n")
        );
        assert_eq!(text.matches("Sig: ").count(), 2);
        assert!(text.find("Sig: a-key:").unwrap() < text.find("Sig: test-key-1:").unwrap());
        assert!(info.fingerprint().ends_with(
            ";/nix/store/00000000000000000000000000000000-z,/nix/store/apfgshfagzjfqmfqwkxlbw29xm6cpn3n-ref-a"
        ));
    }

    #[test]
    fn renders_optional_fields_in_nix_order() {
        let mut info = NarInfo::parse(ADDED).unwrap();
        info.deriver = Some(StorePath::from_basename("5jwlmd82xmq41rj1vvc30zk5igzzwmbb-built.drv").unwrap());
        info.system = Some("x86_64-linux".into());
        info.file_hash = None;
        info.file_size = None;
        let text = info.render();
        let order: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            order,
            ["StorePath", "URL", "Compression", "NarHash", "NarSize", "References", "Deriver", "System", "Sig", "CA"]
        );
        assert_eq!(NarInfo::parse(&text).unwrap(), info);
    }

    #[test]
    fn fingerprint_is_nixs() {
        let info = NarInfo::parse(BUILT).unwrap();
        assert_eq!(
            info.fingerprint(),
            "1;/nix/store/fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built;\
             sha256:15ik2z29y6f9yff6060qq685pp122lga1z6l0f28k3w4hb1mlvhc;168;\
             /nix/store/apfgshfagzjfqmfqwkxlbw29xm6cpn3n-ref-a"
        );
        let added = NarInfo::parse(ADDED).unwrap();
        assert!(added.fingerprint().ends_with(";120;"), "no references: empty last field");
    }

    #[test]
    fn content_addressed_paths_are_recognised() {
        // ADDED is `nix-store --add` of a file: its CA gives its path.
        let added = NarInfo::parse(ADDED).unwrap();
        assert_eq!(added.content_addressed_path(), Some(Ok(added.store_path.clone())));
        assert_eq!(NarInfo::parse(BUILT).unwrap().content_addressed_path(), None);
        // Another name, another reference, or another CA kind: another path.
        let renamed =
            NarInfo { store_path: StorePath::from_parts(*added.store_path.digest(), "f2").unwrap(), ..added.clone() };
        assert_ne!(renamed.content_addressed_path(), Some(Ok(renamed.store_path.clone())));
        let referring = NarInfo { references: NarInfo::parse(BUILT).unwrap().references, ..added.clone() };
        assert_ne!(referring.content_addressed_path(), Some(Ok(referring.store_path.clone())));
        let mut flat = added.clone();
        flat.ca.as_mut().unwrap().kind = CaKind::FlatSha256;
        assert_ne!(flat.content_addressed_path(), Some(Ok(flat.store_path.clone())));
        // A flat path with references is no content-addressed path at all.
        let flat_referring = NarInfo { references: referring.references.clone(), ..flat };
        assert!(matches!(flat_referring.content_addressed_path(), Some(Err(InvalidStorePath::FixedWithReferences(_)))));
    }

    #[test]
    fn compression_words_and_extensions() {
        for (word, ext) in [
            ("none", ""),
            ("xz", ".xz"),
            ("bzip2", ".bz2"),
            ("zstd", ".zst"),
            ("lzip", ".lzip"),
            ("lz4", ".lz4"),
            ("br", ".br"),
        ] {
            let c = Compression::from_word(word);
            assert_eq!((c.as_str(), c.nar_extension()), (word, ext));
        }
        assert_eq!(Compression::from_word(""), Compression::Bzip2);
        assert_eq!(Compression::from_word("gzip"), Compression::Other("gzip".into()));
        assert_eq!(Compression::from_word("gzip").as_str(), "gzip");
    }
}
