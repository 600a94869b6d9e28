//! Feeds arbitrary bytes to the store path parsers (absolute paths, basenames as text and as
//! bytes, names), nixbase32 in both directions, the nar-bridge file names built on them, and
//! BLAKE3 digests in text form. Nothing may panic, and every parser is checked against its
//! printer: what is accepted prints to a form that parses back to the same value, and a
//! nixbase32 string that decodes is the encoding of what it decodes to (so one digest has one
//! spelling, as Nix assumes when it compares paths as strings).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tvix_store::castore::B3Digest;
use tvix_store::narbridge::{NarName, served_nar_url};
use tvix_store::storepath::{StorePath, nixbase32, validate_name};

fuzz_target!(|data: &[u8]| {
    // nixbase32 of every length up to 69 bytes (SHA-512 is 64), length chosen by the input.
    if let Some((&len, rest)) = data.split_first() {
        let len = usize::from(len % 70);
        if let Ok(decoded) = nixbase32::decode(rest, len) {
            assert_eq!(decoded.len(), len);
            assert_eq!(nixbase32::encode(&decoded).as_bytes(), rest, "nixbase32 decodes two spellings alike");
        }
        let encoded = nixbase32::encode(rest);
        assert_eq!(encoded.len(), nixbase32::encoded_len(rest.len()));
        assert_eq!(nixbase32::decode(encoded.as_bytes(), rest.len()).as_deref(), Ok(rest), "decode(encode(x)) != x");
    }

    if let Ok(p) = StorePath::from_basename_bytes(data) {
        assert_eq!(p.to_basename().as_bytes(), data, "a basename is accepted in a non-canonical spelling");
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if validate_name(s).is_ok() {
        assert_eq!(StorePath::from_parts([0; 20], s).map(|p| p.name().to_string()).as_deref(), Ok(s));
    }
    if let Ok(p) = StorePath::parse(s) {
        assert_eq!(StorePath::parse(&p.to_absolute_path()).as_ref(), Ok(&p));
        assert_eq!(StorePath::from_basename(&p.to_basename()).as_ref(), Ok(&p));
        assert_eq!(StorePath::from_parts(*p.digest(), p.name()).as_ref(), Ok(&p));
        // Absolute paths may carry trailing slashes; nothing else differs from the printed form.
        let want = if s.starts_with('/') { p.to_absolute_path() } else { p.to_basename() };
        assert_eq!(s.trim_end_matches('/'), want);
    }

    match NarName::parse(s) {
        Ok(NarName::Served { path, nar_sha256 }) => {
            let url = served_nar_url(&path, &nar_sha256);
            assert_eq!(url.strip_prefix("nar/"), Some(s), "a served NAR name is accepted in another spelling");
        }
        Ok(NarName::Upload { file_hash, compression }) => {
            assert_eq!(format!("{}.nar{}", nixbase32::encode(&file_hash), compression.nar_extension()), s);
        }
        Err(_) => {}
    }

    if let Ok(d) = s.parse::<B3Digest>() {
        assert_eq!(d.to_string().parse::<B3Digest>(), Ok(d));
        assert_eq!(d.to_hex().parse::<B3Digest>(), Ok(d));
    }
});
