//! Feeds arbitrary bytes to the PathInfo decoders: protobuf `tvix.store.v1.PathInfo` into
//! the validated `PathInfo` (`PathInfo::from_proto`), and the stored form
//! (`PathInfo::decode_stored`, which also checks the store path against the key it was read
//! under). Neither may panic; they must agree; an accepted PathInfo must round-trip through its
//! encoding to the same value, and the stored form must refuse it under any other digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tvix_store::pathinfo::PathInfo;
use tvix_store::proto::store as proto;

fuzz_target!(|data: &[u8]| {
    // The stored-form parser under a key taken from the input, so both of its outcomes
    // (right path, other path) are reachable.
    let mut key = [0u8; 20];
    let n = data.len().min(20);
    key[..n].copy_from_slice(&data[..n]);
    let stored = PathInfo::decode_stored(data, &key);

    let Ok(message) = proto::PathInfo::decode(data) else {
        assert!(stored.is_err(), "decode_stored accepted bytes that are not a protobuf PathInfo");
        return;
    };
    let Ok(info) = PathInfo::from_proto(message) else {
        assert!(stored.is_err(), "decode_stored accepted a PathInfo that from_proto refuses");
        return;
    };
    match &stored {
        Ok(s) => assert_eq!(s, &info, "decode_stored and from_proto disagree"),
        Err(_) => {
            assert_ne!(info.store_path.digest(), &key, "decode_stored refused a valid PathInfo under its own key")
        }
    }

    let encoded = info.encode();
    let again = PathInfo::decode_stored(&encoded, info.store_path.digest())
        .expect("the encoding of an accepted PathInfo is refused");
    assert_eq!(again, info, "decode(encode(p)) != p");
    assert_eq!(again.encode(), encoded, "the encoding is not a fixed point");
    let mut other = *info.store_path.digest();
    other[0] ^= 1;
    assert!(PathInfo::decode_stored(&encoded, &other).is_err(), "a PathInfo was accepted under another path's key");
});
