//! fuse-backend-rs's `FileSystem` trait over the shared filesystem core ([`StoreFs`]):
//! conversions only, no filesystem logic of its own.

use std::collections::HashSet;
use std::ffi::CStr;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{CreateIn, stat64, statvfs64};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry as FuseDirEntry, Entry as FuseEntry, FileSystem, FsOptions, GetxattrReply, ListxattrReply,
    OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use parking_lot::Mutex;

use crate::fs::{Attr, DirEntry, Entry, FsError, Lookup, ROOT_INO, StoreFs, XattrReply};

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

/// Logs failures of the store itself (a request's own mistakes are the guest's business).
fn fail(e: FsError) -> io::Error {
    e.log();
    e.into()
}

/// One guest session's view of the shared [`StoreFs`]. It remembers the handles this
/// session opened, so that a guest that reboots or disconnects without closing its files
/// does not leak them in the core.
pub struct VirtioStoreFs {
    fs: Arc<StoreFs>,
    files: Mutex<HashSet<u64>>,
    dirs: Mutex<HashSet<u64>>,
}

impl VirtioStoreFs {
    /// A session over `fs`.
    pub fn new(fs: Arc<StoreFs>) -> Self {
        VirtioStoreFs { fs, files: Mutex::new(HashSet::new()), dirs: Mutex::new(HashSet::new()) }
    }

    fn release_all(&self) {
        for fh in self.files.lock().drain() {
            self.fs.release(fh);
        }
        for fh in self.dirs.lock().drain() {
            self.fs.releasedir(fh);
        }
    }
}

impl Drop for VirtioStoreFs {
    fn drop(&mut self) {
        self.release_all();
    }
}

fn stat_of(attr: &Attr) -> stat64 {
    // Entry's Default is the library's sanctioned way to get a zeroed stat64.
    let mut st = FuseEntry::default().attr;
    st.st_ino = attr.ino;
    st.st_mode = attr.kind.mode_type() | u32::from(attr.perm);
    st.st_nlink = u64::from(attr.nlink);
    st.st_uid = attr.uid;
    st.st_gid = attr.gid;
    st.st_size = attr.size as i64;
    st.st_blocks = attr.blocks as i64;
    st.st_blksize = i64::from(attr.blksize);
    let t = attr.mtime_secs as i64;
    st.st_atime = t;
    st.st_mtime = t;
    st.st_ctime = t;
    st
}

fn dir_entry_of(e: &DirEntry) -> FuseDirEntry<'_> {
    FuseDirEntry {
        ino: e.entry.ino,
        offset: e.next_offset,
        type_: u32::from(e.entry.attr.kind.dirent_type()),
        name: &e.name,
    }
}

fn entry_of(e: &Entry) -> FuseEntry {
    FuseEntry {
        inode: e.ino,
        generation: 0,
        attr: stat_of(&e.attr),
        attr_flags: 0,
        attr_timeout: e.attr_ttl,
        entry_timeout: e.entry_ttl,
    }
}

impl VirtioStoreFs {
    /// Feeds core directory entries to the FUSE reply buffer until it is full; `plus` for
    /// READDIRPLUS (each entry taken is a lookup the core counts).
    fn list(
        &self,
        inode: u64,
        handle: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(&DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut reply_err = None;
        let mut feed = |e: DirEntry| match add(&e) {
            Ok(0) => false, // buffer full
            Ok(_) => true,
            Err(err) => {
                reply_err = Some(err);
                false
            }
        };
        if plus {
            self.fs.readdirplus(inode, handle, offset, &mut feed)
        } else {
            self.fs.readdir(inode, handle, offset, &mut feed)
        }
        .map_err(fail)?;
        match reply_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl FileSystem for VirtioStoreFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // A second INIT on the same connection is a rebooted guest: its predecessor's handles
        // are gone.
        self.release_all();
        let want = FsOptions::ASYNC_READ
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::DO_READDIRPLUS
            | FsOptions::READDIRPLUS_AUTO
            | FsOptions::CACHE_SYMLINKS;
        Ok(capable & want)
    }

    fn destroy(&self) {
        self.release_all();
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<FuseEntry> {
        match self.fs.lookup_reply(parent, name.to_bytes()).map_err(fail)? {
            Lookup::Found(e) => Ok(entry_of(&e)),
            // A negative entry (inode 0) lets the kernel cache the miss for the given time.
            Lookup::Absent { ttl } => Ok(FuseEntry { entry_timeout: ttl, ..FuseEntry::default() }),
        }
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.fs.forget(inode, count);
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        self.fs.batch_forget(&requests);
    }

    fn getattr(&self, _ctx: &Context, inode: u64, _handle: Option<u64>) -> io::Result<(stat64, Duration)> {
        let attr = self.fs.getattr(inode).map_err(fail)?;
        Ok((stat_of(&attr), self.fs.attr_ttl()))
    }

    fn setattr(
        &self,
        _ctx: &Context,
        _inode: u64,
        _attr: stat64,
        _handle: Option<u64>,
        _valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        Err(erofs())
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.fs.readlink(inode).map(|b| b.to_vec()).map_err(fail)
    }

    fn symlink(&self, _ctx: &Context, _l: &CStr, _p: u64, _n: &CStr) -> io::Result<FuseEntry> {
        Err(erofs())
    }

    fn mknod(&self, _ctx: &Context, _p: u64, _n: &CStr, _m: u32, _r: u32, _u: u32) -> io::Result<FuseEntry> {
        Err(erofs())
    }

    fn mkdir(&self, _ctx: &Context, _p: u64, _n: &CStr, _m: u32, _u: u32) -> io::Result<FuseEntry> {
        Err(erofs())
    }

    fn unlink(&self, _ctx: &Context, _p: u64, _n: &CStr) -> io::Result<()> {
        Err(erofs())
    }

    fn rmdir(&self, _ctx: &Context, _p: u64, _n: &CStr) -> io::Result<()> {
        Err(erofs())
    }

    fn rename(&self, _ctx: &Context, _o: u64, _on: &CStr, _n: u64, _nn: &CStr, _f: u32) -> io::Result<()> {
        Err(erofs())
    }

    fn link(&self, _ctx: &Context, _i: u64, _p: u64, _n: &CStr) -> io::Result<FuseEntry> {
        Err(erofs())
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let opened = self.fs.open(inode, flags as i32).map_err(fail)?;
        self.files.lock().insert(opened.fh);
        let opts = if opened.keep_cache { OpenOptions::KEEP_CACHE } else { OpenOptions::empty() };
        Ok((Some(opened.fh), opts, None))
    }

    fn create(
        &self,
        _ctx: &Context,
        _parent: u64,
        _name: &CStr,
        _args: CreateIn,
    ) -> io::Result<(FuseEntry, Option<u64>, OpenOptions, Option<u32>)> {
        Err(erofs())
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        // A guest may ask for more than its buffers hold; never write past them.
        let size = size.min(u32::try_from(w.available_bytes()).unwrap_or(u32::MAX));
        let data = self.fs.read(inode, handle, offset, size).map_err(fail)?;
        w.write_all(&data)?;
        Ok(data.len())
    }

    fn write(
        &self,
        _ctx: &Context,
        _inode: u64,
        _handle: u64,
        _r: &mut dyn ZeroCopyReader,
        _size: u32,
        _offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        Err(erofs())
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        if self.files.lock().remove(&handle) {
            self.fs.release(handle);
        }
        Ok(())
    }

    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _lock_owner: u64) -> io::Result<()> {
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        let s = self.fs.statfs();
        // Zeroed by the trait's default, which also sets sane name-length defaults.
        let mut st = default_statvfs();
        st.f_bsize = u64::from(s.bsize);
        st.f_frsize = u64::from(s.frsize);
        st.f_blocks = s.blocks;
        st.f_bfree = s.bfree;
        st.f_bavail = s.bavail;
        st.f_files = s.files;
        st.f_ffree = s.ffree;
        st.f_favail = s.ffree;
        st.f_namemax = u64::from(s.namelen);
        Ok(st)
    }

    fn setxattr(&self, _ctx: &Context, _i: u64, _n: &CStr, _v: &[u8], _f: u32) -> io::Result<()> {
        Err(erofs())
    }

    fn getxattr(&self, _ctx: &Context, inode: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        Ok(match self.fs.getxattr(inode, name.to_bytes(), size).map_err(fail)? {
            XattrReply::Size(n) => GetxattrReply::Count(n),
            XattrReply::Data(v) => GetxattrReply::Value(v),
        })
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        Ok(match self.fs.listxattr(inode, size).map_err(fail)? {
            XattrReply::Size(n) => ListxattrReply::Count(n),
            XattrReply::Data(v) => ListxattrReply::Names(v),
        })
    }

    fn removexattr(&self, _ctx: &Context, _i: u64, _n: &CStr) -> io::Result<()> {
        Err(erofs())
    }

    fn opendir(&self, _ctx: &Context, inode: u64, _flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        let dir = self.fs.opendir(inode).map_err(fail)?;
        // Remembered for every directory: an open handle keeps its inode live in the core.
        self.dirs.lock().insert(dir.fh);
        let options =
            if dir.cache_listing { OpenOptions::CACHE_DIR | OpenOptions::KEEP_CACHE } else { OpenOptions::empty() };
        Ok((Some(dir.fh), options))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(FuseDirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.list(inode, handle, offset, false, &mut |e| add_entry(dir_entry_of(e)))
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(FuseDirEntry, FuseEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.list(inode, handle, offset, true, &mut |e| add_entry(dir_entry_of(e), entry_of(&e.entry)))
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        if self.dirs.lock().remove(&handle) {
            self.fs.releasedir(handle);
        }
        Ok(())
    }

    fn access(&self, _ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.fs.getattr(inode).map_err(fail)?;
        if mask & libc::W_OK as u32 != 0 {
            return Err(erofs());
        }
        Ok(())
    }

    fn fallocate(&self, _ctx: &Context, _i: u64, _h: u64, _m: u32, _o: u64, _l: u64) -> io::Result<()> {
        Err(erofs())
    }
}

/// A statvfs64 with every field zero.
fn default_statvfs() -> statvfs64 {
    struct Defaults;
    impl FileSystem for Defaults {
        type Inode = u64;
        type Handle = u64;
    }
    let ctx = Context { uid: 0, gid: 0, pid: 0 };
    // The trait's default statfs only zero-fills and sets f_namemax/f_bsize.
    Defaults.statfs(&ctx, ROOT_INO).unwrap_or_else(|_| unreachable!("default statfs cannot fail"))
}
