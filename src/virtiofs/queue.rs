//! Serving one virtqueue: popping FUSE requests off it, answering them through the
//! fuse-backend-rs server and returning the buffers to the guest.
//!
//! The guest is not trusted: a request that cannot be decoded or whose descriptors point
//! outside guest memory is answered with an error (when it has room for one) and the queue
//! keeps going. A panic while handling one request is caught and answered the same way.

use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use vhost_user_backend::{VringRwLock, VringState, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

/// The guest memory type shared with the VMM.
pub type GuestMem = GuestMemoryMmap<()>;
/// Atomic handle on the guest memory, swapped by the vhost-user machinery on remaps.
pub type AtomicMem = GuestMemoryAtomic<GuestMem>;
type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMem>>;

/// Drains `vring`: every available request is handled (inline, or by `pool` when given) and
/// returned to the used ring.
///
/// With `event_idx`, guest notifications stay off while draining and the guest is only
/// interrupted when it asked to be (the used-event index); the final re-enable re-checks the
/// ring, so a request that arrives in between is not missed.
pub fn drain<F: FileSystem + Sync>(
    server: &Server<F>,
    mem: &AtomicMem,
    vring: &VringRwLock<AtomicMem>,
    event_idx: bool,
    pool: Option<&Pool>,
) -> io::Result<()> {
    let mem = mem.memory();
    loop {
        if event_idx {
            vring.disable_notification().map_err(queue_err)?;
        }
        loop {
            let (chain, layout) = {
                let mut state = vring.get_mut();
                let q = state.get_queue_mut();
                (q.pop_descriptor_chain(mem.clone()), Layout::of(q))
            };
            let Some(chain) = chain else { break };
            match pool {
                Some(pool) => pool.submit(Job { chain, mem: mem.clone(), vring: vring.clone(), event_idx, layout }),
                None => {
                    let head = chain.head_index();
                    let used_len = handle_request(server, &mem, chain);
                    complete(&mut vring.get_mut(), head, used_len, event_idx)?;
                }
            }
        }
        if !event_idx || !vring.enable_notification().map_err(queue_err)? {
            break;
        }
    }
    Ok(())
}

/// Where a queue lived when a request was popped off it. A request finished by a pool thread
/// after the guest reset the queue (reboot) must not be written into the new queue.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Layout {
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl Layout {
    fn of(q: &virtio_queue::Queue) -> Self {
        Layout { desc_table: q.desc_table(), avail_ring: q.avail_ring(), used_ring: q.used_ring() }
    }
}

/// One popped request for a pool thread.
pub struct Job {
    chain: Chain,
    mem: GuestMemoryLoadGuard<GuestMem>,
    vring: VringRwLock<AtomicMem>,
    event_idx: bool,
    layout: Layout,
}

/// Threads that handle requests concurrently, so that one slow request (a blob fetched over
/// the network) does not hold up the others queued behind it on the same virtqueue, and
/// read-ahead requests overlap. Completion order does not matter to FUSE.
pub struct Pool {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Pool {
    /// Starts `threads` threads answering with `server`, inside `runtime`'s context if given.
    pub fn start<F: FileSystem + Send + Sync + 'static>(
        server: Arc<Server<F>>,
        threads: usize,
        runtime: Option<tokio::runtime::Handle>,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let (server, rx, runtime) = (server.clone(), rx.clone(), runtime.clone());
            let handle = std::thread::Builder::new().name(format!("virtiofs-worker-{i}")).spawn(move || {
                let _runtime = runtime.as_ref().map(|h| h.enter());
                loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let head = job.chain.head_index();
                    let used_len = handle_request(&server, &job.mem, job.chain);
                    let mut state = job.vring.get_mut();
                    let q = state.get_queue();
                    if !q.ready() || Layout::of(q) != job.layout {
                        tracing::debug!("virtiofs: queue was reset while a request ran; dropping its reply");
                        continue;
                    }
                    if let Err(e) = complete(&mut state, head, used_len, job.event_idx) {
                        tracing::warn!(error = %e, "virtiofs: cannot complete a request");
                    }
                }
            })?;
            handles.push(handle);
        }
        Ok(Pool { tx: Mutex::new(Some(tx)), threads: Mutex::new(handles) })
    }

    fn submit(&self, job: Job) {
        let sent = match self.tx.lock() {
            Ok(tx) => tx.as_ref().map(|tx| tx.send(job).is_ok()),
            Err(_) => None,
        };
        if sent != Some(true) {
            tracing::error!("virtiofs: worker pool is gone; request dropped");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the channel ends the threads once they finish what they hold.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut threads) = self.threads.lock() {
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

fn queue_err(e: virtio_queue::Error) -> io::Error {
    io::Error::other(format!("virtqueue: {e}"))
}

/// Puts a finished request on the used ring and interrupts the guest if it wants to know.
/// Done under one lock so that concurrent completions cannot miss a notification.
fn complete(state: &mut VringState<AtomicMem>, head: u16, len: u32, event_idx: bool) -> io::Result<()> {
    state.add_used(head, len).map_err(queue_err)?;
    if !event_idx || state.needs_notification().map_err(queue_err)? {
        state.signal_used_queue()?;
    }
    Ok(())
}

/// Handles one request; returns how many bytes were written into the guest's buffers.
fn handle_request<F: FileSystem + Sync>(server: &Server<F>, mem: &GuestMem, chain: Chain) -> u32 {
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "virtiofs: request with unusable readable descriptors");
            return reply_error_if_room(mem, &chain, None, libc::EINVAL);
        }
    };
    let header: Option<InHeader> = reader.clone().read_obj().ok();
    let writer = match VirtioFsWriter::new(mem, chain.clone()) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "virtiofs: request with unusable writable descriptors");
            return 0;
        }
    };
    // Zero the reply header first so that, if the server fails, we can tell whether it had
    // already sent an error reply before giving up.
    if let Some(h) = header {
        let _ = write_out_header(mem, &chain, OutHeader { len: 0, error: 0, unique: !h.unique });
    }
    let result = catch_unwind(AssertUnwindSafe(|| server.handle_message(reader, Writer::VirtioFs(writer), None, None)));
    match result {
        Ok(Ok(written)) => u32::try_from(written).unwrap_or(u32::MAX),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, opcode = header.map(|h| h.opcode), "virtiofs: bad request");
            reply_error_if_room(mem, &chain, header, libc::EINVAL)
        }
        Err(_) => {
            tracing::error!(opcode = header.map(|h| h.opcode), "virtiofs: request handler panicked");
            reply_error_if_room(mem, &chain, header, libc::EIO)
        }
    }
}

/// After a failed request: if the server already wrote a reply (its unique matches), keep
/// it; otherwise write an error reply, unless the request is one that gets no reply.
fn reply_error_if_room(mem: &GuestMem, chain: &Chain, header: Option<InHeader>, errno: i32) -> u32 {
    let Some(h) = header else {
        return 0;
    };
    if h.opcode == Opcode::Forget as u32 || h.opcode == Opcode::BatchForget as u32 {
        return 0;
    }
    if let Some(existing) = read_out_header(mem, chain)
        && existing.unique == h.unique
    {
        return existing.len;
    }
    let out = OutHeader { len: size_of::<OutHeader>() as u32, error: -errno, unique: h.unique };
    match write_out_header(mem, chain, out) {
        Ok(()) => out.len,
        Err(_) => 0,
    }
}

fn write_out_header(mem: &GuestMem, chain: &Chain, out: OutHeader) -> io::Result<()> {
    let mut w = VirtioFsWriter::new(mem, chain.clone()).map_err(io::Error::other)?;
    w.write_all(vm_memory::ByteValued::as_slice(&out))
}

/// Reads back the reply header from the first writable descriptor, if it is big enough.
fn read_out_header(mem: &GuestMem, chain: &Chain) -> Option<OutHeader> {
    let desc = chain.clone().writable().next()?;
    if (desc.len() as usize) < size_of::<OutHeader>() {
        return None;
    }
    mem.read_obj(desc.addr()).ok()
}
