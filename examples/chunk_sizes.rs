//! Measures the trade-offs behind the blob chunk sizes (see `castore::blobservice::chunker`):
//! cutting speed relative to BLAKE3 hashing of the same bytes, chunks (objects, digests,
//! requests) per GiB, bytes fetched for a random small read, and how much of a blob must be
//! stored again after small edits. Input: real binaries from /usr/lib, up to 256 MiB.
//!
//! Run: `cargo run --release --example chunk_sizes [DIR]`

use std::collections::HashSet;
use std::time::Instant;

use fastcdc::v2020::FastCDC;

fn sample(dir: &std::path::Path, limit: usize, out: &mut Vec<u8>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if out.len() >= limit {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            sample(&path, limit, out);
        } else if meta.is_file()
            && let Ok(bytes) = std::fs::read(&path)
        {
            out.extend_from_slice(&bytes[..bytes.len().min(limit - out.len())]);
        }
    }
}

fn chunks(data: &[u8], min: usize, avg: usize, max: usize) -> Vec<(usize, usize)> {
    FastCDC::new(data, min, avg, max).map(|c| (c.offset, c.length)).collect()
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/usr/lib".into());
    let mut data = Vec::new();
    sample(std::path::Path::new(&dir), 256 << 20, &mut data);
    let mib = data.len() as f64 / (1 << 20) as f64;

    let t = Instant::now();
    let hash = blake3::hash(&data);
    let hash_rate = mib / t.elapsed().as_secs_f64();
    println!("sample: {mib:.0} MiB from {dir}; BLAKE3 {hash_rate:.0} MiB/s (baseline) {}", &hash.to_hex()[..8]);

    // The same sample with ten 100-byte insertions spread through it.
    let mut edited = data.clone();
    for i in (1..=10).rev() {
        let at = data.len() / 11 * i;
        edited.splice(at..at, std::iter::repeat_n(0xa5u8, 100));
    }

    println!(
        "{:>18} {:>12} {:>12} {:>16} {:>14}",
        "min/avg/max KiB", "cut ×BLAKE3", "chunks/GiB", "avg fetch (KiB)", "re-stored"
    );
    for (min, avg, max) in [(16, 64, 256), (64, 256, 1024), (256, 1024, 4096)] {
        let (min, avg, max) = (min << 10, avg << 10, max << 10);
        let t = Instant::now();
        let cut = chunks(&data, min, avg, max);
        let cut_rate = mib / t.elapsed().as_secs_f64();
        let per_gib = cut.len() as f64 * 1024.0 / mib;
        // A random small read fetches the chunk it falls in: length-weighted mean chunk size.
        let fetch = cut.iter().map(|&(_, l)| (l * l) as f64).sum::<f64>() / data.len() as f64 / 1024.0;
        let known: HashSet<blake3::Hash> = cut.iter().map(|&(o, l)| blake3::hash(&data[o..o + l])).collect();
        let restored: usize = chunks(&edited, min, avg, max)
            .iter()
            .filter(|&&(o, l)| !known.contains(&blake3::hash(&edited[o..o + l])))
            .map(|&(_, l)| l)
            .sum();
        println!(
            "{:>18} {:>12.2} {:>12.0} {:>16.0} {:>13.1}%",
            format!("{}/{}/{}", min >> 10, avg >> 10, max >> 10),
            cut_rate / hash_rate,
            per_gib,
            fetch,
            restored as f64 * 100.0 / edited.len() as f64
        );
    }
}
