//! What our client learnt about a daemon: whether it serves one of our `tvix_store.ext.v1`
//! extensions, or only the tvix protocol.

use std::sync::atomic::{AtomicU8, Ordering};

use super::channel::GrpcChannel;

/// Whether each daemon of a channel has one of our extension services: unknown until the first
/// call to it found out (a server without it answers UNIMPLEMENTED). Calls go to the channel's
/// current daemon; a failover between the check and the call can at worst have one call find
/// out for the wrong daemon, which then uses the tvix RPCs (correct, only slower) until the
/// client restarts.
pub(crate) struct ExtensionSupport {
    states: Box<[AtomicU8]>,
    current: GrpcChannel,
}

const UNKNOWN: u8 = 0;
const PRESENT: u8 = 1;
const ABSENT: u8 = 2;

impl ExtensionSupport {
    /// Unknown for every daemon of `channel`.
    pub(crate) fn of(channel: &GrpcChannel) -> Self {
        Self::with(channel, UNKNOWN)
    }

    /// Known to be absent (or not to be used) for every daemon of `channel`.
    pub(crate) fn absent(channel: &GrpcChannel) -> Self {
        Self::with(channel, ABSENT)
    }

    fn with(channel: &GrpcChannel, state: u8) -> Self {
        Self { states: (0..channel.daemons()).map(|_| AtomicU8::new(state)).collect(), current: channel.clone() }
    }

    /// The state of the daemon calls go to now.
    fn state(&self) -> &AtomicU8 {
        &self.states[self.current.current_daemon() % self.states.len()]
    }

    /// For the daemon calls go to now; `None` while unknown.
    pub(crate) fn known(&self) -> Option<bool> {
        match self.state().load(Ordering::Relaxed) {
            PRESENT => Some(true),
            ABSENT => Some(false),
            _ => None,
        }
    }

    /// Records what a call to the current daemon found out.
    pub(crate) fn set(&self, present: bool) {
        if present {
            // Absent stays absent: a client forced to the plain protocol must stay there.
            let _ = self.state().compare_exchange(UNKNOWN, PRESENT, Ordering::Relaxed, Ordering::Relaxed);
        } else {
            // Also after it was present: the daemon was replaced by a server without it.
            self.state().store(ABSENT, Ordering::Relaxed);
        }
    }
}
