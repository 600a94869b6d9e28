//! Unit tests that cross layers (they may use every module): what a whole read path does.

mod read_path;
