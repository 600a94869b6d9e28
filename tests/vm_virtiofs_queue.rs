//! The virtiofs request loop against a hostile guest, without a VM: descriptor chains are
//! written by hand into a guest memory map and the queue is drained the way the daemon's queue
//! threads do. Every malformed or out-of-range request must get an error reply (when it has
//! room for one) or be returned empty, and the queue must go on serving valid requests.

use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, EntryOut, GetattrIn, GetxattrIn, InHeader, InitIn, InitOut, Opcode, OpenIn, OpenOut, OutHeader, ReadIn,
};
use fuse_backend_rs::api::server::Server;
use tvix_store::fs::{Options, StoreFs};
use tvix_store::virtiofs::VirtioStoreFs;
use tvix_store::virtiofs::queue::{AtomicMem, GuestMem, Pool, drain};
use vhost_user_backend::{VringRwLock, VringT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

const QUEUE_SIZE: u16 = 16;
const MEM_SIZE: usize = 1 << 20;
const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x2000;
const USED_RING: u64 = 0x3000;
const BUFFERS: u64 = 0x10000;
const FAR_AWAY: u64 = 0x10_0000_0000;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A guest driver just capable enough to put requests on one queue.
struct Guest {
    mem: AtomicMem,
    vring: VringRwLock<AtomicMem>,
    server: Server<VirtioStoreFs>,
    fs: Arc<StoreFs>,
    runtime: tokio::runtime::Runtime,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    next_buf: u64,
    unique: u64,
}

/// One descriptor: where, how long, device-writable or not.
struct Desc {
    addr: u64,
    len: u32,
    write: bool,
}

/// What the device put on the used ring for one request, plus the reply it wrote.
struct Completion {
    len: u32,
    reply: Option<OutHeader>,
    reply_addr: u64,
}

impl Guest {
    fn new() -> Self {
        Self::with_tree(None, Options::default()).0
    }

    /// A guest whose store holds `tree` (if given) imported as a store path, whose basename is
    /// returned.
    fn with_tree(tree: Option<&std::path::Path>, options: Options) -> (Self, String) {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let (fs, basename) = runtime.block_on(async {
            let store = tvix_store::store::Store::in_memory();
            let mut basename = String::new();
            if let Some(tree) = tree {
                let info = tvix_store::import::import_path(&store, tree, None).await.expect("import");
                basename = info.store_path.to_basename();
            }
            let roots = store.root_nodes();
            (StoreFs::new(store.blob, store.directory, roots, tokio::runtime::Handle::current(), options), basename)
        });
        let fs = Arc::new(fs);
        let server = Server::new(VirtioStoreFs::new(fs.clone()));
        let map = GuestMem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
        let mem = GuestMemoryAtomic::new(map);
        let vring = VringRwLock::new(mem.clone(), QUEUE_SIZE).expect("vring");
        vring.set_queue_size(QUEUE_SIZE);
        vring.set_queue_info(DESC_TABLE, AVAIL_RING, USED_RING).expect("queue addresses");
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let guest = Guest {
            mem,
            vring,
            server,
            fs,
            runtime,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            next_buf: BUFFERS,
            unique: 100,
        };
        (guest, basename)
    }

    /// The reply body after the header.
    fn body<T: ByteValued>(&self, c: &Completion) -> T {
        self.mem.memory().read_obj(GuestAddress(c.reply_addr + size_of::<OutHeader>() as u64)).expect("reply body")
    }

    /// LOOKUP of `name` in `parent`; returns the inode.
    fn lookup(&mut self, parent: u64, name: &str) -> u64 {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        let (h, c) = self.request(Opcode::Lookup as u32, parent, &body, 4096);
        let reply = c.reply.expect("lookup reply");
        assert_eq!((reply.unique, reply.error), (h.unique, 0), "lookup {name}");
        let entry: EntryOut = self.body(&c);
        assert_ne!(entry.nodeid, 0, "lookup {name}: negative entry");
        entry.nodeid
    }

    fn write_at(&self, addr: u64, data: &[u8]) {
        self.mem.memory().write_slice(data, GuestAddress(addr)).expect("write guest memory");
    }

    fn alloc(&mut self, data: &[u8], len: usize) -> u64 {
        let addr = self.next_buf;
        self.next_buf += (len as u64).max(1).next_multiple_of(64);
        assert!(self.next_buf < MEM_SIZE as u64, "test ran out of guest memory");
        let mut buf = vec![0xa5u8; len];
        buf[..data.len()].copy_from_slice(data);
        self.write_at(addr, &buf);
        addr
    }

    /// Puts a chain on the avail ring; returns its head index.
    fn push(&mut self, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % QUEUE_SIZE;
            let last = i + 1 == descs.len();
            let flags = if last { 0 } else { F_NEXT } | if d.write { F_WRITE } else { 0 };
            let next = (idx + 1) % QUEUE_SIZE;
            let mut raw = Vec::with_capacity(16);
            raw.extend_from_slice(&d.addr.to_le_bytes());
            raw.extend_from_slice(&d.len.to_le_bytes());
            raw.extend_from_slice(&flags.to_le_bytes());
            raw.extend_from_slice(&if last { 0u16 } else { next }.to_le_bytes());
            self.write_at(DESC_TABLE + 16 * u64::from(idx), &raw);
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % QUEUE_SIZE;
        let slot = self.avail_idx % QUEUE_SIZE;
        self.write_at(AVAIL_RING + 4 + 2 * u64::from(slot), &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write_at(AVAIL_RING + 2, &self.avail_idx.to_le_bytes());
        head
    }

    fn drain(&self, pool: Option<&Pool>) {
        // The daemon's queue threads run inside the runtime's context; so does this one.
        let _rt = self.runtime.enter();
        drain(&self.server, &self.mem, &self.vring, false, pool).expect("drain must not fail");
    }

    fn used_idx(&self) -> u16 {
        self.mem.memory().read_obj(GuestAddress(USED_RING + 2)).expect("used idx")
    }

    /// The next used-ring entry: (descriptor head, length).
    fn next_used(&mut self) -> (u16, u32) {
        let mem = self.mem.memory();
        let slot = self.used_seen % QUEUE_SIZE;
        self.used_seen = self.used_seen.wrapping_add(1);
        let id: u32 = mem.read_obj(GuestAddress(USED_RING + 4 + 8 * u64::from(slot))).expect("used id");
        let len: u32 = mem.read_obj(GuestAddress(USED_RING + 8 + 8 * u64::from(slot))).expect("used len");
        (id as u16, len)
    }

    /// Puts a chain on the avail ring, drains the queue inline, returns the used-ring entry.
    fn submit(&mut self, descs: &[Desc]) -> Completion {
        let head = self.push(descs);
        self.drain(None);
        assert_eq!(self.used_idx(), self.used_seen.wrapping_add(1), "exactly one request must be completed");
        let (id, len) = self.next_used();
        assert_eq!(id, head, "used ring must return the chain's head");
        let reply_addr = descs.iter().find(|d| d.write).map(|d| d.addr).unwrap_or(0);
        let mem = self.mem.memory();
        let reply = (len as usize >= size_of::<OutHeader>())
            .then(|| mem.read_obj::<OutHeader>(GuestAddress(reply_addr)).expect("reply header"));
        Completion { len, reply, reply_addr }
    }

    fn header(&mut self, opcode: u32, nodeid: u64, body_len: usize) -> InHeader {
        self.unique += 1;
        InHeader {
            len: (size_of::<InHeader>() + body_len) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        }
    }

    /// A well-formed request: header + body readable, `reply_len` writable.
    fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8], reply_len: usize) -> (InHeader, Completion) {
        let h = self.header(opcode, nodeid, body.len());
        let mut msg = h.as_slice().to_vec();
        msg.extend_from_slice(body);
        let req = self.alloc(&msg, msg.len());
        let rep = self.alloc(&[], reply_len);
        let c = self.submit(&[
            Desc { addr: req, len: msg.len() as u32, write: false },
            Desc { addr: rep, len: reply_len as u32, write: true },
        ]);
        (h, c)
    }

    fn init(&mut self) {
        let body = InitIn { major: 7, minor: 31, max_readahead: 1 << 17, flags: 0 };
        let (h, c) = self.request(Opcode::Init as u32, 0, body.as_slice(), 4096);
        let reply = c.reply.expect("INIT must be answered");
        assert_eq!((reply.unique, reply.error), (h.unique, 0), "INIT failed");
        let out: InitOut =
            self.mem.memory().read_obj(GuestAddress(c.reply_addr + size_of::<OutHeader>() as u64)).expect("init out");
        assert_eq!(out.major, 7);
    }

    /// Asserts that the request got an error reply with `errno` for its own unique.
    fn expect_error(&mut self, h: InHeader, c: &Completion, errno: i32, what: &str) {
        let reply = c.reply.unwrap_or_else(|| panic!("{what}: no reply (used len {})", c.len));
        assert_eq!(reply.unique, h.unique, "{what}: reply for another request");
        assert_eq!(reply.error, -errno, "{what}: wrong error");
        assert_eq!(c.len, reply.len, "{what}: used length must be the reply's length");
    }

    /// The root's attributes must still come back: the queue survived.
    fn still_serving(&mut self, after: &str) {
        let body = GetattrIn::default();
        let (h, c) = self.request(Opcode::Getattr as u32, 1, body.as_slice(), 4096);
        let reply = c.reply.unwrap_or_else(|| panic!("after {after}: GETATTR got no reply"));
        assert_eq!((reply.unique, reply.error), (h.unique, 0), "after {after}: GETATTR failed");
        let out: AttrOut =
            self.mem.memory().read_obj(GuestAddress(c.reply_addr + size_of::<OutHeader>() as u64)).expect("attr out");
        assert_eq!(out.attr.ino, 1, "after {after}: root inode");
        assert_eq!(out.attr.mode & libc::S_IFMT, libc::S_IFDIR, "after {after}: root is a directory");
    }
}

#[test]
fn unknown_opcode_gets_enosys() {
    let mut g = Guest::new();
    g.init();
    let (h, c) = g.request(9999, 1, &[0u8; 8], 4096);
    g.expect_error(h, &c, libc::ENOSYS, "opcode 9999");
    g.still_serving("unknown opcode");
}

#[test]
fn unknown_inode_gets_enoent() {
    let mut g = Guest::new();
    g.init();
    let body = GetattrIn::default();
    let (h, c) = g.request(Opcode::Getattr as u32, 0xdead_beef, body.as_slice(), 4096);
    g.expect_error(h, &c, libc::ENOENT, "getattr of an unknown inode");
    let (h, c) = g.request(Opcode::Readlink as u32, 0xdead_beef, &[], 4096);
    g.expect_error(h, &c, libc::ENOENT, "readlink of an unknown inode");
    g.still_serving("unknown inodes");
}

#[test]
fn read_with_unknown_handle_or_huge_offset_gets_an_error() {
    let mut g = Guest::new();
    g.init();
    let body = ReadIn { fh: 4242, offset: u64::MAX - 10, size: 1 << 20, ..Default::default() };
    let (h, c) = g.request(Opcode::Read as u32, 1, body.as_slice(), 4096);
    g.expect_error(h, &c, libc::EBADF, "read with an unknown handle");
    g.still_serving("bad read");
}

#[test]
fn writes_get_erofs() {
    let mut g = Guest::new();
    g.init();
    let (h, c) = g.request(Opcode::Mkdir as u32, 1, b"\xed\x01\0\0\0\0\0\0newdir\0", 4096);
    g.expect_error(h, &c, libc::EROFS, "mkdir");
    let (h, c) = g.request(Opcode::Unlink as u32, 1, b"x\0", 4096);
    g.expect_error(h, &c, libc::EROFS, "unlink");
    g.still_serving("writes");
}

#[test]
fn name_without_nul_gets_an_error_reply() {
    let mut g = Guest::new();
    g.init();
    let (h, c) = g.request(Opcode::Lookup as u32, 1, b"no-terminator", 4096);
    g.expect_error(h, &c, libc::EINVAL, "lookup of a name without NUL");
    g.still_serving("bad name");
}

#[test]
fn header_length_beyond_limits_gets_an_error_reply() {
    let mut g = Guest::new();
    g.init();
    let mut h = g.header(Opcode::Getattr as u32, 1, 0);
    h.len = u32::MAX;
    let req = g.alloc(h.as_slice(), size_of::<InHeader>());
    let rep = g.alloc(&[], 4096);
    let c = g.submit(&[
        Desc { addr: req, len: size_of::<InHeader>() as u32, write: false },
        Desc { addr: rep, len: 4096, write: true },
    ]);
    g.expect_error(h, &c, libc::ENOMEM, "header.len = u32::MAX");
    g.still_serving("oversized header length");
}

#[test]
fn truncated_request_is_returned_without_crashing() {
    let mut g = Guest::new();
    g.init();
    // Half a header: there is no unique to answer to, so the buffers just come back.
    let req = g.alloc(&[1u8; 20], 20);
    let rep = g.alloc(&[], 4096);
    let c = g.submit(&[Desc { addr: req, len: 20, write: false }, Desc { addr: rep, len: 4096, write: true }]);
    assert_eq!(c.len, 0);
    // A complete header whose body is missing: answered with an error.
    let (h, c) = g.request(Opcode::Read as u32, 1, &[0u8; 4], 4096);
    g.expect_error(h, &c, libc::EINVAL, "read with a truncated body");
    g.still_serving("truncated requests");
}

#[test]
fn descriptors_outside_guest_memory_are_returned_without_crashing() {
    let mut g = Guest::new();
    g.init();
    let rep = g.alloc(&[], 4096);
    let c = g.submit(&[Desc { addr: FAR_AWAY, len: 64, write: false }, Desc { addr: rep, len: 4096, write: true }]);
    assert_eq!(c.len, 0, "request in unmapped memory: nothing to answer");
    let h = g.header(Opcode::Getattr as u32, 1, size_of::<GetattrIn>());
    let mut msg = h.as_slice().to_vec();
    msg.extend_from_slice(GetattrIn::default().as_slice());
    let req = g.alloc(&msg, msg.len());
    let c = g.submit(&[
        Desc { addr: req, len: msg.len() as u32, write: false },
        Desc { addr: FAR_AWAY, len: 4096, write: true },
    ]);
    assert_eq!(c.len, 0, "reply buffer in unmapped memory: nothing written");
    // A buffer that starts inside guest memory and runs past its end.
    let c = g.submit(&[
        Desc { addr: req, len: msg.len() as u32, write: false },
        Desc { addr: MEM_SIZE as u64 - 8, len: 4096, write: true },
    ]);
    assert_eq!(c.len, 0, "reply buffer crossing the end of memory");
    g.still_serving("out-of-range descriptors");
}

#[test]
fn reply_buffer_too_small_is_handled() {
    let mut g = Guest::new();
    g.init();
    let body = GetattrIn::default();
    let (_, c) = g.request(Opcode::Getattr as u32, 1, body.as_slice(), 8);
    assert_eq!(c.len, 0, "an 8-byte reply buffer cannot hold any reply");
    let (h, c) = g.request(Opcode::Getattr as u32, 1, body.as_slice(), 16);
    // Room for a header only: the attributes do not fit, an error header does.
    let reply = c.reply.expect("a 16-byte buffer holds an error reply");
    assert_eq!(reply.unique, h.unique);
    assert_ne!(reply.error, 0);
    g.still_serving("small reply buffers");
}

#[test]
fn forget_of_unknown_inode_needs_no_reply() {
    let mut g = Guest::new();
    g.init();
    let (_, c) = g.request(Opcode::Forget as u32, 0xdead, &5u64.to_le_bytes(), 0);
    assert_eq!(c.len, 0);
    g.still_serving("forget");
}

#[test]
fn worker_pool_answers_every_request_of_a_batch() {
    let mut g = Guest::new();
    g.init();
    let server = Arc::new(Server::new(VirtioStoreFs::new(g.fs.clone())));
    let pool = Pool::start(server, 3, Some(g.runtime.handle().clone())).expect("pool");
    let mut sent = std::collections::HashMap::new();
    for i in 0..7u64 {
        // Alternate good and bad requests: the root's attributes, and an unknown inode.
        let nodeid = if i % 2 == 0 { 1 } else { 0xbad0 + i };
        let h = g.header(Opcode::Getattr as u32, nodeid, size_of::<GetattrIn>());
        let mut msg = h.as_slice().to_vec();
        msg.extend_from_slice(GetattrIn::default().as_slice());
        let req = g.alloc(&msg, msg.len());
        let rep = g.alloc(&[], 4096);
        let head = g.push(&[
            Desc { addr: req, len: msg.len() as u32, write: false },
            Desc { addr: rep, len: 4096, write: true },
        ]);
        sent.insert(head, (h, rep));
    }
    g.drain(Some(&pool));
    let target = g.used_seen.wrapping_add(7);
    let start = std::time::Instant::now();
    while g.used_idx() != target {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "pool completed only {}", g.used_idx());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for _ in 0..7 {
        let (head, len) = g.next_used();
        let (h, rep) = sent.remove(&head).expect("completion for a submitted head, once");
        let reply: OutHeader = g.mem.memory().read_obj(GuestAddress(rep)).expect("reply");
        assert_eq!(reply.unique, h.unique);
        assert_eq!(reply.len, len);
        let want = if h.nodeid == 1 { 0 } else { -libc::ENOENT };
        assert_eq!(reply.error, want, "nodeid {}", h.nodeid);
    }
    assert!(sent.is_empty());
    drop(pool);
}

#[test]
fn reads_past_the_end_return_nothing_and_xattrs_answer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("pkg");
    std::fs::create_dir_all(tree.join("share")).expect("mkdir");
    std::fs::write(tree.join("share/data"), b"0123456789").expect("write");
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(tree.join("share/big"), &big).expect("write");
    let options = Options { show_xattr: true, ..Options::default() };
    let (mut g, basename) = Guest::with_tree(Some(&tree), options);
    g.init();
    let pkg = g.lookup(1, &basename);
    let share = g.lookup(pkg, "share");
    let file = g.lookup(share, "data");

    let open = OpenIn { flags: libc::O_RDONLY as u32, fuse_flags: 0 };
    let (h, c) = g.request(Opcode::Open as u32, file, open.as_slice(), 4096);
    assert_eq!(c.reply.map(|r| (r.unique, r.error)), Some((h.unique, 0)), "open");
    let fh = g.body::<OpenOut>(&c).fh;

    let read = |g: &mut Guest, offset: u64, size: u32| {
        let body = ReadIn { fh, offset, size, flags: libc::O_RDONLY as u32, ..Default::default() };
        let (h, c) = g.request(Opcode::Read as u32, file, body.as_slice(), 4096);
        let reply = c.reply.expect("read reply");
        assert_eq!((reply.unique, reply.error), (h.unique, 0), "read at {offset}");
        let n = reply.len as usize - size_of::<OutHeader>();
        let mut data = vec![0u8; n];
        g.mem
            .memory()
            .read_slice(&mut data, GuestAddress(c.reply_addr + size_of::<OutHeader>() as u64))
            .expect("read data");
        data
    };
    assert_eq!(read(&mut g, 0, 4096), b"0123456789");
    assert_eq!(read(&mut g, 7, 4096), b"789");
    assert_eq!(read(&mut g, 10, 4096), b"", "read at the end");
    assert_eq!(read(&mut g, 1 << 40, 4096), b"", "read far past the end");
    assert_eq!(read(&mut g, u64::MAX - 1, u32::MAX), b"", "read at the largest offset");
    // Asking for more than the small file has: the rest of it.
    assert_eq!(read(&mut g, 2, 1 << 20), b"23456789");

    // Asking for more than the guest's reply buffer holds: what fits, from the right offset.
    let big_ino = g.lookup(share, "big");
    let (_, c) = g.request(Opcode::Open as u32, big_ino, open.as_slice(), 4096);
    let big_fh = g.body::<OpenOut>(&c).fh;
    let body = ReadIn { fh: big_fh, offset: 1000, size: 1 << 20, flags: libc::O_RDONLY as u32, ..Default::default() };
    let (h, c) = g.request(Opcode::Read as u32, big_ino, body.as_slice(), 4096);
    let reply = c.reply.expect("read reply");
    assert_eq!((reply.unique, reply.error), (h.unique, 0), "oversized read");
    let n = reply.len as usize - size_of::<OutHeader>();
    assert_eq!(n, 4096 - size_of::<OutHeader>(), "the whole reply buffer is used, no more");
    let mut data = vec![0u8; n];
    g.mem
        .memory()
        .read_slice(&mut data, GuestAddress(c.reply_addr + size_of::<OutHeader>() as u64))
        .expect("read data");
    assert_eq!(data, big[1000..1000 + n]);

    let mut name = tvix_store::fs::XATTR_BLOB_DIGEST.as_bytes().to_vec();
    name.push(0);
    let mut body = GetxattrIn { size: 0, padding: 0 }.as_slice().to_vec();
    body.extend_from_slice(&name);
    let (h, c) = g.request(Opcode::Getxattr as u32, file, &body, 4096);
    assert_eq!(c.reply.map(|r| (r.unique, r.error)), Some((h.unique, 0)), "getxattr size query");
    let mut body = GetxattrIn { size: 1, padding: 0 }.as_slice().to_vec();
    body.extend_from_slice(&name);
    let (h, c) = g.request(Opcode::Getxattr as u32, file, &body, 4096);
    g.expect_error(h, &c, libc::ERANGE, "getxattr into a 1-byte buffer");
    let mut body = GetxattrIn { size: 64, padding: 0 }.as_slice().to_vec();
    body.extend_from_slice(b"user.nonexistent\0");
    let (h, c) = g.request(Opcode::Getxattr as u32, file, &body, 4096);
    g.expect_error(h, &c, libc::ENODATA, "getxattr of an unknown name");
    g.still_serving("reads and xattrs");
}
