//! Feeds arbitrary bytes to the narinfo parser (`NarInfo::parse_bytes`, what the substituter
//! and nar-bridge's upload call on fetched or uploaded bodies). It must never panic, and an
//! accepted narinfo must survive rendering: parsing the rendered text gives the same narinfo
//! (up to the order and duplicates of references and signatures, which Nix keeps in sets), and
//! rendering is a fixed point, as it is for files Nix wrote. The fingerprint Nix signs must
//! not depend on that order either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tvix_store::narinfo::{NarInfo, format_signature};

/// The narinfo with its set-valued fields in one order, duplicates dropped.
fn normalised(mut info: NarInfo) -> NarInfo {
    info.references.sort_by_cached_key(|r| r.to_basename());
    info.references.dedup();
    info.signatures.sort_by_cached_key(format_signature);
    info.signatures.dedup();
    info
}

fuzz_target!(|data: &[u8]| {
    let Ok(info) = NarInfo::parse_bytes(data) else {
        return;
    };
    let rendered = info.render();
    let again = NarInfo::parse(&rendered).expect("the rendering of an accepted narinfo is refused");
    assert_eq!(again.render(), rendered, "rendering is not a fixed point");
    assert_eq!(again.fingerprint(), info.fingerprint(), "the fingerprint changed in rendering");
    assert_eq!(normalised(again), normalised(info), "parse(render(n)) != n");
});
