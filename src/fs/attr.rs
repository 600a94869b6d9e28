//! The core's own view of inode attributes and directory entries; each frontend converts these
//! into its library's types.

use std::time::Duration;

use bytes::Bytes;

/// An inode number. [`ROOT_INO`] is the mount root; every other number is handed out by the
/// core and stays valid, with the same meaning, for the life of the [`super::StoreFs`].
pub type Ino = u64;

/// The mount root's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT_INO: Ino = 1;

/// Modification (and access/change) time of every inode, in seconds after the Unix epoch: Nix
/// sets store files to 1 so builds are reproducible.
pub const MTIME_SECS: u64 = 1;

/// Preferred I/O size reported in `st_blksize`.
pub const BLKSIZE: u32 = 4096;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A regular file.
    RegularFile,
    /// A symbolic link.
    Symlink,
}

impl FileKind {
    /// The file type bits of `st_mode` (`S_IFDIR`...).
    pub fn mode_type(self) -> u32 {
        match self {
            FileKind::Directory => libc::S_IFDIR,
            FileKind::RegularFile => libc::S_IFREG,
            FileKind::Symlink => libc::S_IFLNK,
        }
    }

    /// The type of a directory entry (`DT_DIR`...).
    pub fn dirent_type(self) -> u8 {
        match self {
            FileKind::Directory => libc::DT_DIR,
            FileKind::RegularFile => libc::DT_REG,
            FileKind::Symlink => libc::DT_LNK,
        }
    }
}

/// Attributes of one inode, as `stat(2)` should show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Exact size in bytes: file length, symlink target length, 0 for directories.
    pub size: u64,
    /// Allocated 512-byte blocks (size rounded up).
    pub blocks: u64,
    /// Kind of inode.
    pub kind: FileKind,
    /// Permission bits (without the file type): 0555 for directories and executables, 0444
    /// for other files, 0777 for symlinks.
    pub perm: u16,
    /// Link count: 1 for files and symlinks, 2 + subdirectories for directories.
    pub nlink: u32,
    /// Owner uid (see [`super::Options::uid`]).
    pub uid: u32,
    /// Owner gid (see [`super::Options::gid`]).
    pub gid: u32,
    /// atime, mtime and ctime, in seconds after the epoch (always [`MTIME_SECS`]).
    pub mtime_secs: u64,
    /// `st_blksize`.
    pub blksize: u32,
}

/// The answer to a successful lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The inode found.
    pub ino: Ino,
    /// Its attributes.
    pub attr: Attr,
    /// How long the kernel may cache the name → inode binding.
    pub entry_ttl: Duration,
    /// How long the kernel may cache the attributes.
    pub attr_ttl: Duration,
}

/// The answer to a lookup as the kernel is told it: an entry, or that the name does not exist
/// (a negative entry the kernel may remember for `ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The name exists.
    Found(Entry),
    /// The name does not exist; the kernel may cache that for this long (short in the root,
    /// where paths get added; long elsewhere, where nothing ever changes).
    Absent {
        /// How long the kernel may remember the miss.
        ttl: Duration,
    },
}

/// One directory entry as returned by [`super::StoreFs::readdir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Entry name (`.`, `..`, or a child's name).
    pub name: Bytes,
    /// Offset to pass to the next readdir call to continue after this entry.
    pub next_offset: u64,
    /// The child's inode, attributes and TTLs (for readdirplus). For `.` and `..` it
    /// describes the directory itself resp. its parent as far as known.
    pub entry: Entry,
}

/// Filesystem statistics for `statfs(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks (of `frsize` bytes); reported as 0: the store has no fixed capacity.
    pub blocks: u64,
    /// Free blocks: 0, the mount is read-only.
    pub bfree: u64,
    /// Available blocks: 0.
    pub bavail: u64,
    /// Inodes handed out so far.
    pub files: u64,
    /// Free inodes: 0.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// The answer to getxattr/listxattr, following the FUSE convention: a request with size 0 asks
/// only for the length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XattrReply {
    /// Length of the value (the request's size was 0).
    Size(u32),
    /// The value itself (it fits into the request's size).
    Data(Vec<u8>),
}

/// An opened file, as returned by [`super::StoreFs::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The file handle to pass to read/release.
    pub fh: u64,
    /// Whether the kernel may keep cached pages from an earlier open (FOPEN_KEEP_CACHE):
    /// always true, contents are immutable.
    pub keep_cache: bool,
}

/// An opened directory, as returned by [`super::StoreFs::opendir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenedDir {
    /// The handle to pass to readdir/releasedir.
    pub fh: u64,
    /// Whether the kernel may cache the listing (FOPEN_CACHE_DIR and FOPEN_KEEP_CACHE): every
    /// directory below the root is immutable; the root's listing grows as paths are added.
    pub cache_listing: bool,
}

pub(crate) fn blocks_of(size: u64) -> u64 {
    size.div_ceil(512)
}
