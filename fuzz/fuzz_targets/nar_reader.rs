//! Feeds arbitrary bytes to the NAR reader. It must never panic, and whenever it accepts an
//! input, re-encoding must reproduce the input exactly (the reader only accepts the canonical
//! encoding, which is what makes NAR hashes reproducible from castore nodes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tvix_store::nar::transcode;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        if let Ok(out) = transcode(data, Vec::new()).await {
            assert!(out == data, "writer(reader(x)) != x for an accepted NAR");
        }
    });
});
