//! The NAR (Nix ARchive) format: a streaming reader and writer that are byte-exact with
//! `nix-store --dump`, plus a hashing sink for computing NAR hashes without storing NARs.

mod calculator;
mod error;
mod hashing;
mod layout;
mod reader;
mod render;
mod transcode;
mod wire;
mod writer;

pub use calculator::NarCalculator;
pub use error::{MAX_NAME_LEN, MAX_TARGET_LEN, NarReadError, NarWriteError, check_name, check_target};
pub use hashing::{HashingReader, NarHasher};
pub use layout::NarLayout;
pub use reader::{FileContents, NarEvent, NarReader};
pub use render::{RenderError, write_nar};
pub use transcode::{TranscodeError, transcode};
pub use writer::NarWriter;
