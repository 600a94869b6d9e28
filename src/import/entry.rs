//! Opening the entries of a local tree without a window between looking and opening.
//!
//! The walk looks at an entry with `lstat` and then reads it. Between the two, whoever can
//! write the tree can swap the entry: for a symlink to a file only we may read (of the same
//! size), or for a FIFO (an open that waits for a writer forever). So nothing is opened by
//! path: every entry is looked up relative to its parent directory's open descriptor
//! (`fstatat`, `openat`, `readlinkat`), files and directories are opened with `O_NOFOLLOW`
//! (files also `O_NONBLOCK`, so a FIFO cannot hold up the open), and the opened descriptor is
//! checked with `fstat` to be the same kind and the same inode the `lstat` saw. A swapped
//! entry is refused with [`ImportError::Replaced`]; nothing of it is read.
//!
//! Directories are walked by descriptor too, so a directory swapped for a symlink cannot lead
//! the walk elsewhere below it either; only the path given to import itself is resolved by
//! path (its last component not followed), as the caller chose it.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::ImportError;

/// What an entry is, by its mode bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    BlockDevice,
    CharDevice,
    Unknown,
}

impl Kind {
    fn of_mode(mode: u32) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Directory,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFBLK => Kind::BlockDevice,
            libc::S_IFCHR => Kind::CharDevice,
            _ => Kind::Unknown,
        }
    }

    /// The kind as [`ImportError::UnsupportedType`] names it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Directory => "directory",
            Kind::Symlink => "symlink",
            Kind::Fifo => "FIFO",
            Kind::Socket => "socket",
            Kind::BlockDevice => "block device",
            Kind::CharDevice => "character device",
            Kind::Unknown => "file of unknown type",
        }
    }

    /// The kind with its article, as [`ImportError::Replaced`] names it.
    fn a(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Directory => "a directory",
            Kind::Symlink => "a symlink",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::BlockDevice => "a block device",
            Kind::CharDevice => "a character device",
            Kind::Unknown => "a file of unknown type",
        }
    }
}

/// What `lstat` said of an entry.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    pub(super) kind: Kind,
    /// Device and inode: what is opened must be this very file.
    pub(super) id: (u64, u64),
}

/// The directory an entry is looked up in: the working directory for the path given to
/// import, else its parent, open.
#[derive(Clone, Copy)]
pub(super) enum At<'a> {
    Cwd,
    Dir(BorrowedFd<'a>),
}

impl At<'_> {
    fn raw(self) -> RawFd {
        match self {
            At::Cwd => libc::AT_FDCWD,
            At::Dir(fd) => fd.as_raw_fd(),
        }
    }
}

/// A path or name as the C string the `*at` calls take.
pub(super) fn c_name(path: &Path, bytes: &[u8]) -> Result<CString, ImportError> {
    CString::new(bytes)
        .map_err(|_| ImportError::Invalid { path: path.to_path_buf(), reason: "contains a NUL byte".into() })
}

/// `lstat` of `name` in `at` (the entry itself, a symlink not followed).
pub(super) fn lstat(at: At<'_>, name: &CStr) -> io::Result<Seen> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a descriptor alive for the call (or AT_FDCWD), a NUL-terminated name and room
    // for one `stat`.
    let rc = unsafe { libc::fstatat(at.raw(), name.as_ptr(), stat.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat filled `stat`: it returned 0.
    let stat = unsafe { stat.assume_init() };
    Ok(Seen { kind: Kind::of_mode(stat.st_mode), id: (stat.st_dev, stat.st_ino) })
}

/// The target of the symlink `name` in `at`.
pub(super) fn read_link(at: At<'_>, name: &CStr, seen: &Seen, path: &Path) -> Result<Vec<u8>, ImportError> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    loop {
        // SAFETY: a descriptor alive for the call (or AT_FDCWD), a NUL-terminated name and a
        // buffer of the length passed.
        let n = unsafe { libc::readlinkat(at.raw(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(changed_or(at, name, seen, path, io::Error::last_os_error()));
        }
        let n = n as usize;
        // A target that filled the buffer may have been cut: try again with more room.
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// A regular file opened by [`open_file`], with what its descriptor says of it.
#[derive(Debug)]
pub(super) struct OpenedFile {
    pub(super) file: std::fs::File,
    pub(super) size: u64,
    pub(super) executable: bool,
}

/// Opens the regular file `name` in `at` for reading, as `seen` saw it: not through a symlink,
/// without waiting on a FIFO, and only if the descriptor is a regular file with the same
/// device and inode.
pub(super) fn open_file(at: At<'_>, name: &CStr, seen: &Seen, path: &Path) -> Result<OpenedFile, ImportError> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let fd = open_at(at, name, flags).map_err(|e| changed_or(at, name, seen, path, e))?;
    let stat = check_opened(fd.as_fd(), seen, path)?;
    // O_NONBLOCK was for the open only (a regular file's reads ignore it); cleared anyway, as
    // the file is read as any other.
    set_blocking(fd.as_fd()).map_err(ImportError::io(path))?;
    Ok(OpenedFile {
        file: std::fs::File::from(fd),
        size: u64::try_from(stat.st_size).unwrap_or(0),
        executable: stat.st_mode & 0o100 != 0,
    })
}

/// Opens the directory `name` in `at` as `seen` saw it: not through a symlink, and only if the
/// descriptor is that very directory.
pub(super) fn open_dir(at: At<'_>, name: &CStr, seen: &Seen, path: &Path) -> Result<OwnedFd, ImportError> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let fd = open_at(at, name, flags).map_err(|e| changed_or(at, name, seen, path, e))?;
    check_opened(fd.as_fd(), seen, path)?;
    Ok(fd)
}

/// Opens again the directory `seen` saw at `path`, which the walk closed to keep few
/// descriptors open, through its subdirectory `child`'s `..`: refused unless it is still that
/// directory (the subdirectory was not moved elsewhere meanwhile).
pub(super) fn reopen_parent(child: BorrowedFd<'_>, seen: &Seen, path: &Path) -> Result<OwnedFd, ImportError> {
    let fd = open_at(At::Dir(child), c"..", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .map_err(ImportError::io(path))?;
    check_opened(fd.as_fd(), seen, path)?;
    Ok(fd)
}

/// The names in the directory `dir` (without `.` and `..`), in no particular order.
pub(super) fn read_names(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    // A descriptor of its own for the listing (`.` is the directory itself, never a path to
    // resolve): fdopendir takes it over and closedir closes it, while `dir` stays open.
    let own = open_at(At::Dir(dir), c".", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)?;
    // SAFETY: a descriptor we own and keep open for the call.
    let stream = unsafe { libc::fdopendir(own.as_raw_fd()) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        drop(own);
        return Err(e);
    }
    // The stream owns the descriptor now; closedir closes it.
    let _ = own.into_raw_fd();
    let mut names = Vec::new();
    let result = loop {
        // readdir tells an error from the end only through errno.
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a stream fdopendir returned and closedir has not closed.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) == 0 { Ok(()) } else { Err(e) };
        }
        // SAFETY: readdir returned a valid entry, whose d_name is NUL-terminated and stays
        // valid until the next readdir on the stream; it is copied out before that.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    };
    // SAFETY: the stream is closed once, here, which closes its descriptor too.
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

/// `openat(at, name, flags)`.
fn open_at(at: At<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a descriptor alive for the call (or AT_FDCWD) and a NUL-terminated name.
    let fd = unsafe { libc::openat(at.raw(), name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat` of an open descriptor.
fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a descriptor alive for the call and room for one `stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat filled `stat`: it returned 0.
    Ok(unsafe { stat.assume_init() })
}

/// Checks that the opened `fd` is what `seen` saw: the same kind, the same inode. Returns its
/// `fstat`.
fn check_opened(fd: BorrowedFd<'_>, seen: &Seen, path: &Path) -> Result<libc::stat, ImportError> {
    let stat = fstat(fd).map_err(ImportError::io(path))?;
    let kind = Kind::of_mode(stat.st_mode);
    if kind != seen.kind {
        return Err(replaced(path, seen.kind, kind.a()));
    }
    if (stat.st_dev, stat.st_ino) != seen.id {
        return Err(replaced(
            path,
            seen.kind,
            if kind == Kind::Directory { "another directory" } else { "another file" },
        ));
    }
    Ok(stat)
}

/// The error of a failed open or readlink: [`ImportError::Replaced`] when the entry is no
/// longer what `seen` saw (a symlink now, where `O_NOFOLLOW` said ELOOP; a socket, where the
/// open said ENXIO), else the I/O error.
fn changed_or(at: At<'_>, name: &CStr, seen: &Seen, path: &Path, e: io::Error) -> ImportError {
    match lstat(at, name) {
        Ok(now) if now.kind != seen.kind => replaced(path, seen.kind, now.kind.a()),
        Ok(now) if now.id != seen.id => replaced(path, seen.kind, "another file"),
        _ => ImportError::Io { path: path.to_path_buf(), source: e },
    }
}

fn replaced(path: &Path, was: Kind, now: &'static str) -> ImportError {
    ImportError::Replaced { path: path.to_path_buf(), was: was.a(), now }
}

/// Clears `O_NONBLOCK` on `fd`.
fn set_blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL on a descriptor alive for the call; no pointers.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::time::Duration;

    use super::*;

    fn c(path: &Path) -> CString {
        CString::new(path.as_os_str().as_bytes()).unwrap()
    }

    fn mkfifo(path: &Path) {
        // SAFETY: a NUL-terminated path alive for the call.
        assert_eq!(unsafe { libc::mkfifo(c(path).as_ptr(), 0o600) }, 0);
    }

    /// Runs `f` on a thread of its own and fails if it does not end within 10 s (an open
    /// waiting on a FIFO would never end).
    fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("hung (an open waiting on a FIFO?)")
    }

    /// What the walk does after `lstat` said "regular file", with the entry swapped between:
    /// each swap is refused, nothing is read, and a FIFO does not make the open wait.
    #[test]
    fn a_file_swapped_after_lstat_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let entry = tmp.path().join("entry");
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, b"secret!").unwrap();
        let same_size = b"benign!";
        let look = || {
            std::fs::write(&entry, same_size).unwrap();
            lstat(At::Cwd, &c(&entry)).unwrap()
        };

        let seen = look();
        let mut opened = open_file(At::Cwd, &c(&entry), &seen, &entry).unwrap();
        assert_eq!((opened.size, opened.executable), (7, false));
        let mut data = Vec::new();
        opened.file.read_to_end(&mut data).unwrap();
        assert_eq!(data, same_size, "the unswapped file");

        // A symlink to another file of the same size.
        let seen = look();
        std::fs::remove_file(&entry).unwrap();
        std::os::unix::fs::symlink(&secret, &entry).unwrap();
        let err = open_file(At::Cwd, &c(&entry), &seen, &entry).unwrap_err();
        assert!(
            matches!(&err, ImportError::Replaced { path, was: "a regular file", now: "a symlink" } if *path == entry),
            "{err:?}"
        );
        assert!(err.to_string().contains(&*entry.to_string_lossy()), "{err}");

        // A FIFO: refused at once, not waited on.
        std::fs::remove_file(&entry).unwrap();
        let seen = look();
        std::fs::remove_file(&entry).unwrap();
        mkfifo(&entry);
        let (e, s) = (entry.clone(), seen);
        let err = bounded(move || open_file(At::Cwd, &c(&e), &s, &e).unwrap_err());
        assert!(matches!(&err, ImportError::Replaced { now: "a FIFO", .. }), "{err:?}");

        // Another regular file renamed over it (same kind, same size, another inode).
        std::fs::remove_file(&entry).unwrap();
        let seen = look();
        let other = tmp.path().join("other");
        std::fs::copy(&secret, &other).unwrap();
        std::fs::rename(&other, &entry).unwrap();
        let err = open_file(At::Cwd, &c(&entry), &seen, &entry).unwrap_err();
        assert!(matches!(&err, ImportError::Replaced { now: "another file", .. }), "{err:?}");
    }

    #[test]
    fn a_directory_swapped_after_lstat_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dir");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("secret"), b"x").unwrap();
        let seen = lstat(At::Cwd, &c(&dir)).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        let err = open_dir(At::Cwd, &c(&dir), &seen, &dir).unwrap_err();
        assert!(matches!(&err, ImportError::Replaced { was: "a directory", now: "a symlink", .. }), "{err:?}");

        // Listed by descriptor: the names of the directory opened, whatever its path is now.
        std::fs::remove_file(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a"), b"a").unwrap();
        let seen = lstat(At::Cwd, &c(&dir)).unwrap();
        let fd = open_dir(At::Cwd, &c(&dir), &seen, &dir).unwrap();
        std::fs::rename(&dir, tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        assert_eq!(read_names(fd.as_fd()).unwrap(), [b"a".to_vec()]);

        // A closed parent is only opened again if `..` still leads to it.
        std::fs::create_dir(tmp.path().join("moved/sub")).unwrap();
        let sub = tmp.path().join("moved/sub");
        let sub_seen = lstat(At::Cwd, &c(&sub)).unwrap();
        let sub_fd = open_dir(At::Cwd, &c(&sub), &sub_seen, &sub).unwrap();
        let parent = reopen_parent(sub_fd.as_fd(), &seen, &dir).unwrap();
        assert_eq!(read_names(parent.as_fd()).unwrap().len(), 2);
        std::fs::rename(&sub, elsewhere.join("sub")).unwrap();
        let err = reopen_parent(sub_fd.as_fd(), &seen, &dir).unwrap_err();
        assert!(matches!(&err, ImportError::Replaced { now: "another directory", .. }), "{err:?}");
    }

    #[test]
    fn symlinks_are_read_where_they_are() {
        let tmp = tempfile::tempdir().unwrap();
        let dir: OwnedFd = std::fs::File::open(tmp.path()).unwrap().into();
        let long = "x/".repeat(2000);
        std::os::unix::fs::symlink(&long, tmp.path().join("long")).unwrap();
        let seen = lstat(At::Dir(dir.as_fd()), c"long").unwrap();
        assert_eq!(seen.kind, Kind::Symlink);
        let target = read_link(At::Dir(dir.as_fd()), c"long", &seen, &tmp.path().join("long")).unwrap();
        assert_eq!(target, long.as_bytes());
    }
}
