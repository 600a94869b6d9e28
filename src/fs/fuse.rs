//! The FUSE frontend: a thin adapter from `fuser` callbacks to [`StoreFs`].
//!
//! fuser runs one event loop per `--threads` worker, each on its own thread with its own
//! `/dev/fuse` clone; every callback calls the synchronous core directly, which blocks that
//! worker (never an async runtime thread) on service calls.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session,
    SessionACL, TimeOrNow, WriteFlags,
};

use super::{Attr, FileKind, FsError, Lookup, StoreFs, XattrReply};

/// Largest read the kernel is asked to send at once; the kernel may cap it (max_pages).
const MAX_READAHEAD: u32 = 1024 * 1024;

/// How a FUSE mount is set up.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Number of request-handling threads (each with its own /dev/fuse clone).
    pub threads: usize,
    /// Let every user access the mount (`allow_other`); otherwise the owner and root.
    pub allow_other: bool,
}

/// Adapts [`StoreFs`] to `fuser::Filesystem`.
pub struct FuseFs {
    fs: Arc<StoreFs>,
    /// The kernel lets us answer OPEN with ENOSYS and then stops sending OPEN/RELEASE:
    /// files open without a round trip, with their page cache kept.
    no_open: bool,
    /// Same for OPENDIR/RELEASEDIR; only used when the root is not listed (the kernel then
    /// caches every listing, which a changing root must not be).
    no_opendir: bool,
}

impl FuseFs {
    /// The adapter over a core.
    pub fn new(fs: Arc<StoreFs>) -> Self {
        Self { fs, no_open: false, no_opendir: false }
    }
}

/// Mounts `fs` on `mountpoint`; the returned session serves requests when run and unmounts
/// when dropped or through its unmounter.
pub fn session(fs: Arc<StoreFs>, mountpoint: &Path, options: &MountOptions) -> std::io::Result<Session<FuseFs>> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("tvix-store".to_string()),
        MountOption::Subtype("tvix-store".to_string()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::Exec,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        // fusermount unmounts after us if this process dies without unmounting.
        MountOption::AutoUnmount,
    ];
    config.acl = if options.allow_other { SessionACL::All } else { SessionACL::RootAndOwner };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = options.threads > 1;
    Session::new(FuseFs::new(fs), mountpoint, &config)
}

fn errno(e: &FsError) -> Errno {
    e.log();
    Errno::from_i32(e.errno())
}

fn file_attr(a: &Attr) -> FileAttr {
    let time = UNIX_EPOCH + Duration::from_secs(a.mtime_secs);
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::Directory => FileType::Directory,
        FileKind::RegularFile => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
    }
}

fn xattr(reply: ReplyXattr, r: Result<XattrReply, FsError>) {
    match r {
        Ok(XattrReply::Size(n)) => reply.size(n),
        Ok(XattrReply::Data(d)) => reply.data(&d),
        Err(e) => reply.error(errno(&e)),
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is an optimisation only; a kernel without it still works.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            let _ = config.add_capabilities(flag);
        }
        self.no_open = config.add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT).is_ok();
        self.no_opendir =
            !self.fs.options().list_root && config.add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT).is_ok();
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup_reply(parent.0, name.as_bytes()) {
            Ok(Lookup::Found(e)) => {
                reply.entry_with_ttls(&e.attr_ttl, &e.entry_ttl, &file_attr(&e.attr), Generation(0))
            }
            Ok(Lookup::Absent { ttl }) => {
                // Inode 0 with a TTL is a negative entry: the kernel remembers the miss.
                let mut attr = file_attr(&self.fs.root_attr());
                attr.ino = INodeNo(0);
                reply.entry_with_ttls(&ttl, &ttl, &attr, Generation(0));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.fs.attr_ttl(), &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    // BATCH_FORGET is left to fuser's default, which calls this once per inode: fuser 0.18
    // does not export `ForgetOne`, the type its `batch_forget` takes, so it cannot be
    // overridden (each forget then takes the table lock once; measured fine, see
    // docs/mount-memory.md).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // Writes never get here (read-only mount); ENOSYS switches the kernel to no_open.
        if self.no_open && flags.0 & libc::O_ACCMODE == libc::O_RDONLY {
            return reply.error(Errno::ENOSYS);
        }
        match self.fs.open(ino.0, flags.0) {
            Ok(o) => {
                let flags = if o.keep_cache { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                reply.opened(FileHandle(o.fh), flags)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(ino.0, fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lo: LockOwner, reply: ReplyEmpty) {
        // Nothing to flush; ENOSYS makes the kernel stop sending flushes at all.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        match self.fs.opendir(ino.0) {
            Ok(dir) if dir.cache_listing => {
                reply.opened(FileHandle(dir.fh), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR)
            }
            Ok(dir) => reply.opened(FileHandle(dir.fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let r = self.fs.readdir(ino.0, fh.0, offset, &mut |e| {
            !reply.add(INodeNo(e.entry.ino), e.next_offset, kind(e.entry.attr.kind), OsStr::from_bytes(&e.name))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let r = self.fs.readdirplus(ino.0, fh.0, offset, &mut |e| {
            !reply.add(
                INodeNo(e.entry.ino),
                e.next_offset,
                OsStr::from_bytes(&e.name),
                &e.entry.entry_ttl,
                &file_attr(&e.entry.attr),
                Generation(0),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr(reply, self.fs.getxattr(ino.0, name.as_bytes(), size));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr(reply, self.fs.listxattr(ino.0, size));
    }

    // Everything below would change the store: read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _r: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _t: &Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, _v: &[u8], _f: i32, _p: u32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn create(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _f: i32, reply: ReplyCreate) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(&self, _req: &Request, _i: INodeNo, _fh: FileHandle, _o: u64, _l: u64, _m: i32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}
