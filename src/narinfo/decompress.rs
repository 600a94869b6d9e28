//! Decompressing NAR files as they stream, for the compressions Nix 2.8 writes that we can
//! read: `none`, `xz`, `bzip2`, `zstd`, `br`, and `gzip` (Nix names it without a suffix).

use tokio::io::{AsyncBufRead, AsyncRead};

use super::Compression;

/// A reader of the NAR inside `file`, compressed with `compression`; `None` for a compression
/// we cannot decompress (`lzip`, `lz4`, or a word Nix does not know either).
pub fn decompressor<'a, R>(compression: &Compression, file: R) -> Option<Box<dyn AsyncRead + Send + Unpin + 'a>>
where
    R: AsyncBufRead + Send + Unpin + 'a,
{
    use async_compression::tokio::bufread as codec;
    Some(match compression {
        Compression::None => Box::new(file),
        Compression::Xz => Box::new(codec::XzDecoder::new(file)),
        Compression::Zstd => Box::new(codec::ZstdDecoder::new(file)),
        Compression::Bzip2 => Box::new(codec::BzDecoder::new(file)),
        Compression::Br => Box::new(codec::BrotliDecoder::new(file)),
        Compression::Other(word) if word == "gzip" => Box::new(codec::GzipDecoder::new(file)),
        Compression::Lzip | Compression::Lz4 | Compression::Other(_) => return None,
    })
}
