//! The vhost-user-fs device backend: virtio feature negotiation and one worker thread per
//! virtqueue (queue 0 is the high-priority queue, the rest are request queues).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier};

use super::queue::{self, AtomicMem};

/// Largest virtqueue a VMM may configure (the virtio maximum for split queues).
const MAX_QUEUE_SIZE: usize = 32768;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// A vhost-user-fs backend answering FUSE requests with `server`, for one VMM connection.
pub struct FsBackend<F: FileSystem + Sync> {
    server: Arc<Server<F>>,
    mem: AtomicMem,
    request_queues: usize,
    event_idx: AtomicBool,
    runtime: Option<tokio::runtime::Handle>,
    pool: Option<queue::Pool>,
}

impl<F: FileSystem + Send + Sync + 'static> FsBackend<F> {
    /// A backend with the high-priority queue plus `request_queues` request queues
    /// (at least one), reading guest memory through `mem`. Requests are handled inside
    /// `runtime`'s context when one is given; with `pool_threads` > 0 by that many threads
    /// shared by all queues, else by each queue's own thread.
    pub fn new(
        server: Arc<Server<F>>,
        mem: AtomicMem,
        request_queues: usize,
        runtime: Option<tokio::runtime::Handle>,
        pool_threads: usize,
    ) -> io::Result<Self> {
        let pool = match pool_threads {
            0 => None,
            n => Some(queue::Pool::start(server.clone(), n, runtime.clone())?),
        };
        Ok(FsBackend {
            server,
            mem,
            request_queues: request_queues.max(1),
            event_idx: AtomicBool::new(false),
            runtime,
            pool,
        })
    }
}

impl<F: FileSystem + Send + Sync + 'static> VhostUserBackend for FsBackend<F> {
    type Bitmap = ();
    type Vring = VringRwLock<AtomicMem>;

    fn num_queues(&self) -> usize {
        1 + self.request_queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<queue::GuestMem>) -> io::Result<()> {
        // The handler swaps the new map into the same atomic we share; nothing else to do,
        // but a different atomic would mean requests read stale memory.
        let _ = mem;
        Ok(())
    }

    /// One thread per queue: a slow request (a blob fetched over the network) on one queue
    /// does not hold up FORGETs on the high-priority queue or another request queue.
    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::error!(error = %e, "virtiofs: cannot create an exit eventfd");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        // Each thread owns exactly one queue, so its only event is that queue's kick.
        let Some(vring) = vrings.get(device_event as usize) else {
            tracing::warn!(device_event, thread_id, "virtiofs: event for an unknown queue");
            return Ok(());
        };
        let _runtime = self.runtime.as_ref().map(|h| h.enter());
        let event_idx = self.event_idx.load(Ordering::Acquire);
        if let Err(e) = queue::drain(&self.server, &self.mem, vring, event_idx, self.pool.as_ref()) {
            // Returning the error would end this queue's thread for the rest of the
            // connection; a broken ring is the guest's problem, so log and keep listening.
            tracing::warn!(error = %e, queue = thread_id, "virtiofs: cannot process queue");
        }
        Ok(())
    }
}
