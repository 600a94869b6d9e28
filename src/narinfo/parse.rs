//! The narinfo parser and its errors.
//!
//! It follows Nix 2.8's `NarInfo::NarInfo(store, text, whence)`: `Key: value` lines, each
//! ending in `\n`; unknown keys ignored (newer writers add fields); a missing or empty
//! `Compression` meaning bzip2; `References` split on spaces; `Deriver: unknown-deriver`
//! meaning none; hashes as `sha256:<nixbase32|hex|base64>` or SRI `sha256-<base64>`
//! (`Hash::parseAnyPrefixed`); StorePath, NarHash, URL and a non-zero NarSize required, checked
//! in that order.
//!
//! Where Nix 2.8 is sloppy we are strict rather than silently different: Nix takes the value
//! two bytes after the first `:` whatever they are, keeps the last of two `StorePath` lines,
//! accepts a `+` or leading blanks in numbers and keeps a `Sig:` it cannot decode (it only
//! fails to verify). Each of those is an error here, as is any repeated single-valued field.
//! Only sha256 is accepted for NarHash and FileHash: Nix itself asserts sha256 when writing,
//! and [`PathInfo`](crate::pathinfo::PathInfo) holds a SHA-256.

use std::fmt;

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};

use super::keys::{SignatureError, decode_base64, parse_signature};
use super::{Compression, NarInfo};
use crate::pathinfo::{CaKind, ContentAddress};
use crate::storepath::{InvalidStorePath, StorePath, nixbase32};

/// Why a narinfo was rejected: what is wrong, on which line, in the narinfo of which path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// The path the narinfo claims to describe, when its `StorePath:` line is valid (it is
    /// looked up even when the error comes first).
    pub store_path: Option<StorePath>,
    /// The 1-based line number, for errors of one line.
    pub line: Option<usize>,
    /// What is wrong (boxed: keeps `Result<NarInfo, ParseError>` small on the happy path).
    pub kind: Box<ParseErrorKind>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.store_path {
            Some(p) => write!(f, "narinfo of {p}")?,
            None => f.write_str("narinfo")?,
        }
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// What is wrong with a narinfo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The bytes are not UTF-8 (valid up to the given offset).
    #[error("not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    /// A line that is not `Key: value` (shown, shortened).
    #[error("expected `Key: value`, found {0:?}")]
    Malformed(String),
    /// The text does not end in a newline; Nix rejects that too.
    #[error("the last line does not end in a newline")]
    NoFinalNewline,
    /// A single-valued field appears twice.
    #[error("{0} appears more than once")]
    Duplicate(&'static str),
    /// NarHash or FileHash is not a SHA-256 in a form Nix writes.
    #[error("{field}: {source}")]
    Hash { field: &'static str, source: HashError },
    /// FileSize or NarSize is not a decimal number that fits 64 bits.
    #[error("{field}: {value:?} is not a decimal number of at most 64 bits")]
    Number { field: &'static str, value: String },
    /// StorePath, a reference or the deriver is not a valid store path.
    #[error("{field}: {source}")]
    StorePath { field: &'static str, source: InvalidStorePath },
    /// A `Sig:` line is not `<key name>:<base64 of 64 bytes>`.
    #[error("Sig: {0}")]
    Signature(SignatureError),
    /// The `CA:` line is not a content address Nix writes.
    #[error("CA: {0}")]
    Ca(CaError),
    /// A required field (StorePath, NarHash, URL or NarSize) is absent.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// `NarSize: 0`, which Nix rejects like a missing NarSize.
    #[error("NarSize is zero")]
    ZeroNarSize,
}

/// Why a hash field is not a SHA-256 Nix would write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// Neither `<algo>:` nor SRI `<algo>-`.
    #[error("{0:?} has no `sha256:` or `sha256-` prefix")]
    NoAlgorithm(String),
    /// An algorithm other than sha256.
    #[error("hash algorithm {0:?} is not supported, only sha256")]
    Algorithm(String),
    /// The digest is not 32 bytes in any encoding Nix accepts.
    #[error(
        "{0:?} is not a SHA-256 digest in nixbase32 (52 characters), hex (64) or base64 (44; \
         the only form after `sha256-`)"
    )]
    Digest(String),
}

/// Why a `CA:` value is not a content address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    /// Not `text:sha256:…` nor `fixed:[r:]<algo>:…` with an algorithm Nix knows.
    #[error("{0:?} is not `text:sha256:<hash>` or `fixed:[r:]<md5|sha1|sha256|sha512>:<hash>`")]
    Kind(String),
    /// The digest has the wrong length or encoding for its algorithm.
    #[error("{value:?} is not a {algorithm} digest in nixbase32, hex or base64")]
    Digest { value: String, algorithm: &'static str },
}

/// Decodes a digest of `len` bytes the way Nix 2.8 does (`Hash(rest, type, isSRI=false)`):
/// the encoding is told apart by length alone, hex, nixbase32 or base64.
fn decode_digest(body: &str, len: usize) -> Option<Vec<u8>> {
    let out = if body.len() == len * 2 {
        HEXLOWER_PERMISSIVE.decode(body.as_bytes()).ok()?
    } else if body.len() == nixbase32::encoded_len(len) {
        nixbase32::decode(body.as_bytes(), len).ok()?
    } else if body.len() == BASE64.encode_len(len) {
        decode_base64(body)?
    } else {
        return None;
    };
    (out.len() == len).then_some(out)
}

/// A SHA-256 as narinfos write it, `sha256:<nixbase32>`.
pub fn format_sha256(hash: &[u8; 32]) -> String {
    format!("sha256:{}", nixbase32::encode(hash))
}

/// Parses `sha256:<nixbase32|hex|base64>` or `sha256-<base64>` (Nix's `parseAnyPrefixed`).
pub fn parse_sha256(value: &str) -> Result<[u8; 32], HashError> {
    // Nix looks for `:` first, then `-`; a base64 body may itself contain neither.
    let (algorithm, body, sri) = match value.split_once(':') {
        Some((a, b)) => (a, b, false),
        None => match value.split_once('-') {
            Some((a, b)) => (a, b, true),
            None => return Err(HashError::NoAlgorithm(value.to_string())),
        },
    };
    if algorithm != "sha256" {
        return Err(HashError::Algorithm(algorithm.to_string()));
    }
    let digest = if sri { decode_base64(body).filter(|d| d.len() == 32) } else { decode_digest(body, 32) };
    digest.and_then(|d| d.try_into().ok()).ok_or_else(|| HashError::Digest(value.to_string()))
}

/// Parses a `CA:` value (Nix's `parseContentAddress`): `text:sha256:<hash>`, or
/// `fixed:r:<algo>:<hash>` (NAR hashed) or `fixed:<algo>:<hash>` (flat file hashed).
pub fn parse_ca(value: &str) -> Result<ContentAddress, CaError> {
    let kind_err = || CaError::Kind(value.to_string());
    let (kind, body) = if let Some(rest) = value.strip_prefix("text:") {
        // Nix 2.8: "text content address hash should use sha256".
        let body = rest.strip_prefix("sha256:").ok_or_else(kind_err)?;
        (CaKind::TextSha256, body)
    } else if let Some(rest) = value.strip_prefix("fixed:") {
        let (recursive, rest) = match rest.strip_prefix("r:") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let (algorithm, body) = rest.split_once(':').ok_or_else(kind_err)?;
        let kind = match (recursive, algorithm) {
            (true, "sha256") => CaKind::NarSha256,
            (true, "sha1") => CaKind::NarSha1,
            (true, "sha512") => CaKind::NarSha512,
            (true, "md5") => CaKind::NarMd5,
            (false, "sha256") => CaKind::FlatSha256,
            (false, "sha1") => CaKind::FlatSha1,
            (false, "sha512") => CaKind::FlatSha512,
            (false, "md5") => CaKind::FlatMd5,
            _ => return Err(kind_err()),
        };
        (kind, body)
    } else {
        return Err(kind_err());
    };
    let digest = decode_digest(body, kind.digest_len()).ok_or_else(|| CaError::Digest {
        value: value.to_string(),
        algorithm: kind.prefix().rsplit(':').next().unwrap_or("hash"),
    })?;
    Ok(ContentAddress { kind, digest: digest.into() })
}

/// A decimal u64, digits only.
fn parse_number(field: &'static str, value: &str) -> Result<u64, ParseErrorKind> {
    let bad = || ParseErrorKind::Number { field, value: value.to_string() };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// The start of a line for an error message: at most 80 characters.
fn shorten(line: &str) -> String {
    match line.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

/// The fields parsed so far; `Option`s double as "seen" markers for duplicate detection.
#[derive(Default)]
struct Fields {
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<Compression>,
    file_hash: Option<[u8; 32]>,
    file_size: Option<u64>,
    nar_hash: Option<[u8; 32]>,
    nar_size: Option<u64>,
    references: Option<Vec<StorePath>>,
    /// `Some(None)` for `unknown-deriver`: seen, but no deriver.
    deriver: Option<Option<StorePath>>,
    system: Option<String>,
    signatures: Vec<crate::pathinfo::Signature>,
    /// `Some(None)` for an empty `CA:` (Nix's `parseContentAddressOpt`).
    ca: Option<Option<ContentAddress>>,
}

/// Sets a single-valued field once.
fn once<T>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), ParseErrorKind> {
    if slot.is_some() {
        return Err(ParseErrorKind::Duplicate(field));
    }
    *slot = Some(value);
    Ok(())
}

fn store_path(field: &'static str, r: Result<StorePath, InvalidStorePath>) -> Result<StorePath, ParseErrorKind> {
    r.map_err(|source| ParseErrorKind::StorePath { field, source })
}

impl Fields {
    fn line(&mut self, key: &str, value: &str) -> Result<(), ParseErrorKind> {
        let hash = |field| parse_sha256(value).map_err(|source| ParseErrorKind::Hash { field, source });
        match key {
            "StorePath" => {
                let p = store_path("StorePath", StorePath::from_absolute_path(value))?;
                once(&mut self.store_path, "StorePath", p)
            }
            "URL" => once(&mut self.url, "URL", value.to_string()),
            "Compression" => once(&mut self.compression, "Compression", Compression::from_word(value)),
            "FileHash" => once(&mut self.file_hash, "FileHash", hash("FileHash")?),
            "FileSize" => once(&mut self.file_size, "FileSize", parse_number("FileSize", value)?),
            "NarHash" => once(&mut self.nar_hash, "NarHash", hash("NarHash")?),
            "NarSize" => once(&mut self.nar_size, "NarSize", parse_number("NarSize", value)?),
            "References" => {
                // Nix's tokenizeString: runs of spaces separate, none at either end count.
                let refs = value
                    .split(' ')
                    .filter(|r| !r.is_empty())
                    .map(|r| store_path("References", StorePath::from_basename(r)))
                    .collect::<Result<_, _>>()?;
                once(&mut self.references, "References", refs)
            }
            "Deriver" => {
                let d = match value {
                    "unknown-deriver" => None,
                    _ => Some(store_path("Deriver", StorePath::from_basename(value))?),
                };
                once(&mut self.deriver, "Deriver", d)
            }
            "System" => once(&mut self.system, "System", value.to_string()),
            "Sig" => {
                self.signatures.push(parse_signature(value).map_err(ParseErrorKind::Signature)?);
                Ok(())
            }
            "CA" => {
                let ca = match value {
                    "" => None,
                    _ => Some(parse_ca(value).map_err(ParseErrorKind::Ca)?),
                };
                once(&mut self.ca, "CA", ca)
            }
            // Unknown keys are ignored, as Nix does: newer writers add fields.
            _ => Ok(()),
        }
    }

    fn finish(self) -> Result<NarInfo, ParseErrorKind> {
        use ParseErrorKind::Missing;
        let store_path = self.store_path.ok_or(Missing("StorePath"))?;
        let nar_hash = self.nar_hash.ok_or(Missing("NarHash"))?;
        let url = self.url.filter(|u| !u.is_empty()).ok_or(Missing("URL"))?;
        let nar_size = match self.nar_size.ok_or(Missing("NarSize"))? {
            0 => return Err(ParseErrorKind::ZeroNarSize),
            n => n,
        };
        Ok(NarInfo {
            store_path,
            url,
            compression: self.compression.unwrap_or(Compression::Bzip2),
            file_hash: self.file_hash,
            file_size: self.file_size,
            nar_hash,
            nar_size,
            references: self.references.unwrap_or_default(),
            deriver: self.deriver.flatten(),
            system: self.system,
            signatures: self.signatures,
            ca: self.ca.flatten(),
        })
    }
}

/// Parses a narinfo; see the module docs for the rules.
pub(super) fn parse(text: &str) -> Result<NarInfo, ParseError> {
    let mut fields = Fields::default();
    let mut rest = text;
    let mut line_no = 0;
    let fail = |line, kind| ParseError { store_path: store_path_hint(text), line, kind: Box::new(kind) };
    while !rest.is_empty() {
        line_no += 1;
        let Some((line, tail)) = rest.split_once('\n') else {
            return Err(fail(Some(line_no), ParseErrorKind::NoFinalNewline));
        };
        rest = tail;
        // Nix takes everything before the first `:` as the key and skips one blank after it.
        let (key, value) = line
            .split_once(':')
            .and_then(|(k, v)| Some((k, v.strip_prefix(' ')?)))
            .ok_or_else(|| fail(Some(line_no), ParseErrorKind::Malformed(shorten(line))))?;
        fields.line(key, value).map_err(|kind| fail(Some(line_no), kind))?;
    }
    fields.finish().map_err(|kind| fail(None, kind))
}

/// The path named by the first valid `StorePath:` line, to name it in an error about any
/// line, including ones before it.
fn store_path_hint(text: &str) -> Option<StorePath> {
    text.lines().find_map(|l| StorePath::from_absolute_path(l.strip_prefix("StorePath: ")?).ok())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ADDED, BUILT};
    use super::*;

    /// `BUILT` with the line starting with `key` replaced (`None`: removed).
    fn with(key: &str, line: Option<&str>) -> String {
        BUILT
            .lines()
            .filter_map(|l| if l.starts_with(key) { line } else { Some(l) })
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn err(text: &str) -> ParseError {
        NarInfo::parse(text).expect_err("must be rejected")
    }

    #[test]
    fn parses_every_field() {
        let info = NarInfo::parse(BUILT).unwrap();
        assert_eq!(info.store_path.to_basename(), "fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built");
        assert_eq!(info.url, "nar/13gwnqr6h0pxvrd45zcflsyc5hlfc4fpm1acsw09mwy5rwdh4pd6.nar.zst");
        assert_eq!(info.compression, Compression::Zstd);
        assert_eq!(nixbase32::encode(&info.file_hash.unwrap()), "13gwnqr6h0pxvrd45zcflsyc5hlfc4fpm1acsw09mwy5rwdh4pd6");
        assert_eq!(info.file_size, Some(130));
        assert_eq!(nixbase32::encode(&info.nar_hash), "15ik2z29y6f9yff6060qq685pp122lga1z6l0f28k3w4hb1mlvhc");
        assert_eq!(info.nar_size, 168);
        assert_eq!(info.references.len(), 1);
        assert_eq!(info.references[0].to_basename(), "apfgshfagzjfqmfqwkxlbw29xm6cpn3n-ref-a");
        assert_eq!(info.deriver.unwrap().to_basename(), "5jwlmd82xmq41rj1vvc30zk5igzzwmbb-built.drv");
        assert_eq!(info.system, None);
        assert_eq!(info.signatures.len(), 1);
        assert_eq!(info.signatures[0].name, "test-key-1");
        assert_eq!(info.ca, None);

        let added = NarInfo::parse(ADDED).unwrap();
        assert!(added.references.is_empty());
        assert_eq!(
            added.ca.unwrap().to_nix_string(),
            "fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
        );
    }

    #[test]
    fn missing_compression_means_bzip2() {
        assert_eq!(NarInfo::parse(&with("Compression", None)).unwrap().compression, Compression::Bzip2);
        assert_eq!(
            NarInfo::parse(&with("Compression", Some("Compression: "))).unwrap().compression,
            Compression::Bzip2
        );
        let other = NarInfo::parse(&with("Compression", Some("Compression: gzip"))).unwrap();
        assert_eq!(other.compression, Compression::Other("gzip".into()));
    }

    #[test]
    fn references_split_on_runs_of_spaces() {
        let text = with(
            "References",
            Some("References:  apfgshfagzjfqmfqwkxlbw29xm6cpn3n-ref-a   fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built "),
        );
        let info = NarInfo::parse(&text).unwrap();
        let names: Vec<String> = info.references.iter().map(StorePath::to_basename).collect();
        assert_eq!(names, ["apfgshfagzjfqmfqwkxlbw29xm6cpn3n-ref-a", "fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built"]);
        assert!(NarInfo::parse(&with("References", None)).unwrap().references.is_empty());
        assert!(NarInfo::parse(&with("References", Some("References: "))).unwrap().references.is_empty());
    }

    #[test]
    fn unknown_deriver_is_none() {
        let info = NarInfo::parse(&with("Deriver", Some("Deriver: unknown-deriver"))).unwrap();
        assert_eq!(info.deriver, None);
        assert!(!info.render().contains("Deriver"), "Nix writes no Deriver line for none");
    }

    #[test]
    fn unknown_keys_and_system_are_read() {
        let mut text = with(
            "Sig",
            Some(
                "Sig: test-key-1:ftxE54/JqnIylKU/E+PUDu14Eud5I6PSgItQpxldq/n+kbPqewzl1+5h4sPMNvVa4KoZzZq2Rqv8HFBAq+j4Bw==",
            ),
        );
        text.push_str("System: x86_64-linux\nFutureField: anything: at all\nFutureField: twice\n");
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.system.as_deref(), Some("x86_64-linux"));
        assert_eq!(info, NarInfo { system: Some("x86_64-linux".into()), ..NarInfo::parse(BUILT).unwrap() });
    }

    #[test]
    fn base64_hashes_in_padded_pieces_are_refused() {
        // Nix stops decoding at the first `=`; data_encoding alone would read on.
        let want = NarInfo::parse(BUILT).unwrap().nar_hash;
        let pieces = format!("sha256-{}{}", BASE64.encode(&want[..31]), BASE64.encode(&want[31..]));
        assert_eq!(parse_sha256(&pieces), Err(HashError::Digest(pieces.clone())));
        assert_eq!(parse_sha256(&format!("sha256-{}", BASE64.encode(&want))), Ok(want));
    }

    #[test]
    fn hashes_in_every_form_nix_accepts() {
        let want = NarInfo::parse(BUILT).unwrap().nar_hash;
        let hex = data_encoding::HEXLOWER.encode(&want);
        let b64 = BASE64.encode(&want);
        for form in [
            format!("sha256:{}", nixbase32::encode(&want)),
            format!("sha256:{hex}"),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:{b64}"),
            format!("sha256-{b64}"),
        ] {
            let info = NarInfo::parse(&with("NarHash", Some(&format!("NarHash: {form}")))).unwrap();
            assert_eq!(info.nar_hash, want, "{form}");
        }
    }

    #[test]
    fn empty_ca_is_none_and_every_ca_kind_parses() {
        assert_eq!(NarInfo::parse(&format!("{BUILT}CA: \n")).unwrap().ca, None);
        for ca in [
            "fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
            "fixed:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
            "text:sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
            "fixed:r:sha1:00000000000000000000000000000000",
            "fixed:md5:00000000000000000000000000",
            "fixed:sha512:0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(parse_ca(ca).unwrap().to_nix_string(), ca);
        }
        // Hex, as Nix also accepts, renders back in nixbase32.
        let hex = parse_ca(&format!("fixed:sha1:{}", "00".repeat(20))).unwrap();
        assert_eq!(hex.kind, CaKind::FlatSha1);
    }

    #[test]
    fn error_names_line_field_and_path() {
        let e = err(&with("NarHash", Some("NarHash: sha256:xyz")));
        assert_eq!(e.line, Some(6));
        assert_eq!(e.store_path.as_ref().unwrap().to_basename(), "fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built");
        assert_eq!(
            e.to_string(),
            "narinfo of /nix/store/fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built, line 6: NarHash: \"sha256:xyz\" is not a \
             SHA-256 digest in nixbase32 (52 characters), hex (64) or base64 (44; the only form after `sha256-`)"
        );
        // An error before the StorePath line still names the path.
        let e = err(&format!("Bad line\n{BUILT}"));
        assert_eq!(e.line, Some(1));
        assert!(e.to_string().starts_with("narinfo of /nix/store/fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built, line 1: "));
    }

    #[test]
    fn every_error() {
        let kind = |text: &str| *err(text).kind;
        let malformed = |s: &str| ParseErrorKind::Malformed(s.to_string());
        assert_eq!(kind(&format!("{BUILT}no colon here\n")), malformed("no colon here"));
        assert_eq!(kind(&format!("{BUILT}Key:no-blank\n")), malformed("Key:no-blank"));
        assert_eq!(kind(&format!("{BUILT}\n")), malformed(""));
        assert_eq!(kind(&format!("{BUILT}{}\n", "x".repeat(200))), malformed(&format!("{}…", "x".repeat(80))));
        assert_eq!(kind(BUILT.trim_end()), ParseErrorKind::NoFinalNewline);
        assert_eq!(
            kind(&BUILT.replace('\n', "\r\n")),
            ParseErrorKind::StorePath {
                field: "StorePath",
                source: InvalidStorePath::Name(
                    "built\r".into(),
                    "it contains a character other than A-Z a-z 0-9 + - . _ ? ="
                ),
            }
        );
        for field in
            ["StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize", "References", "Deriver"]
        {
            let line = BUILT.lines().find(|l| l.starts_with(field)).unwrap();
            assert_eq!(kind(&format!("{BUILT}{line}\n")), ParseErrorKind::Duplicate(field), "{field}");
        }
        assert_eq!(kind(&format!("{BUILT}System: a\nSystem: b\n")), ParseErrorKind::Duplicate("System"));
        assert_eq!(kind(&format!("{BUILT}CA: \nCA: \n")), ParseErrorKind::Duplicate("CA"));

        let hash = |field: &'static str, source| ParseErrorKind::Hash { field, source };
        let h = "15ik2z29y6f9yff6060qq685pp122lga1z6l0f28k3w4hb1mlvhc";
        assert_eq!(
            kind(&with("NarHash", Some(&format!("NarHash: {h}")))),
            hash("NarHash", HashError::NoAlgorithm(h.into()))
        );
        assert_eq!(
            kind(&with("NarHash", Some(&format!("NarHash: sha512:{h}")))),
            hash("NarHash", HashError::Algorithm("sha512".into()))
        );
        let nb32 = format!("sha256-{h}");
        assert_eq!(
            kind(&with("FileHash", Some(&format!("FileHash: {nb32}")))),
            hash("FileHash", HashError::Digest(nb32))
        );
        let bad_char = format!("sha256:{}e", &h[..51]);
        assert_eq!(
            kind(&with("NarHash", Some(&format!("NarHash: {bad_char}")))),
            hash("NarHash", HashError::Digest(bad_char))
        );

        for n in ["", "-1", "+1", " 1", "1.0", "18446744073709551616", "0x10"] {
            let number = |field: &'static str| ParseErrorKind::Number { field, value: n.to_string() };
            assert_eq!(kind(&with("NarSize", Some(&format!("NarSize: {n}")))), number("NarSize"), "{n:?}");
            assert_eq!(kind(&with("FileSize", Some(&format!("FileSize: {n}")))), number("FileSize"), "{n:?}");
        }
        assert!(NarInfo::parse(&with("NarSize", Some("NarSize: 18446744073709551615"))).is_ok());

        let bad_path = |text: &str, field| match kind(text) {
            ParseErrorKind::StorePath { field: f, .. } => assert_eq!(f, field, "{text}"),
            other => panic!("{field}: {other:?}"),
        };
        bad_path(&with("StorePath", Some("StorePath: fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built")), "StorePath");
        bad_path(&with("StorePath", Some("StorePath: /tmp/fxhnr7k7b0hlv4cvm3qnbbz91712n7zd-built")), "StorePath");
        bad_path(&with("StorePath", Some("StorePath: /nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-built")), "StorePath");
        bad_path(
            &with("References", Some("References: /nix/store/apfgshfagzjfqmfqwkxlbw29xm6cpn3n-ref-a")),
            "References",
        );
        bad_path(&with("References", Some("References: apfgshfagzjfqmfqwkxlbw29xm6cpn3n-ref-a short")), "References");
        bad_path(&with("Deriver", Some("Deriver: 5jwlmd82xmq41rj1vvc30zk5igzzwmbb-a b.drv")), "Deriver");

        assert!(matches!(kind(&with("Sig", Some("Sig: no-colon"))), ParseErrorKind::Signature(_)));
        assert!(matches!(
            kind(&format!("{BUILT}CA: fixed:r:sha256:abc\n")),
            ParseErrorKind::Ca(CaError::Digest { .. })
        ));
        assert!(matches!(kind(&format!("{BUILT}CA: fixed:r:sha3:abc\n")), ParseErrorKind::Ca(CaError::Kind(_))));
        assert!(matches!(kind(&format!("{BUILT}CA: text:sha1:abc\n")), ParseErrorKind::Ca(CaError::Kind(_))));
        assert!(matches!(kind(&format!("{BUILT}CA: source:abc\n")), ParseErrorKind::Ca(CaError::Kind(_))));

        // Required fields, in Nix's order of complaint; no line number.
        let e = err(&with("StorePath", None));
        assert_eq!((*e.kind, e.line, e.store_path), (ParseErrorKind::Missing("StorePath"), None, None));
        assert_eq!(kind(&with("NarHash", None)), ParseErrorKind::Missing("NarHash"));
        assert_eq!(kind(&with("URL", None)), ParseErrorKind::Missing("URL"));
        assert_eq!(kind(&with("URL", Some("URL: "))), ParseErrorKind::Missing("URL"));
        assert_eq!(kind(&with("NarSize", None)), ParseErrorKind::Missing("NarSize"));
        assert_eq!(kind(&with("NarSize", Some("NarSize: 0"))), ParseErrorKind::ZeroNarSize);
        assert_eq!(kind(""), ParseErrorKind::Missing("StorePath"));
        assert_eq!(kind(&with("StorePath", None).replace("NarHash", "X")), ParseErrorKind::Missing("StorePath"));

        let e = NarInfo::parse_bytes(b"StorePath: \xff\n").expect_err("not UTF-8");
        assert_eq!(*e.kind, ParseErrorKind::NotUtf8(11));
    }
}
