//! Process-wide tuning our programs apply at start, and the socket tuning every connection gets.

/// Blob data moves in buffers of up to 1 MiB (chunks, gRPC messages). glibc serves
/// allocations that large with a fresh `mmap` and unmaps them on free, so every buffer costs
/// 256 page faults and the kernel zeroing its pages: ~10% of a client's CPU while reading a
/// large blob through the daemon. Raising the mmap threshold keeps such buffers in the heap,
/// and the trim threshold keeps freed heap for the next buffer instead of returning it to the
/// kernel at once. Both are bounded, so memory use stays bounded.
pub fn tune_allocator() {
    const MMAP_THRESHOLD: libc::c_int = 4 * 1024 * 1024;
    const TRIM_THRESHOLD: libc::c_int = 32 * 1024 * 1024;
    // SAFETY: mallopt only adjusts allocator parameters; a failure (0) leaves the defaults.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// rustls needs one process-wide crypto provider for every HTTPS client (binary caches, S3);
/// we use ring (pure Rust and C, no cmake).
pub fn install_tls_provider() {
    // Fails only when one is installed already, which is what we want either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Send buffer asked for on unix socket connections, by client and server. The kernel's default
/// (~200 KiB) holds less than one 1 MiB chunk message, so a chunk crossed the socket in several
/// pieces, each a sleep and a wake-up of both sides: a 1 GiB read moved at ~0.6 GB/s with both
/// processes mostly idle. The kernel caps the value at `net.core.wmem_max`.
const UNIX_SEND_BUFFER: libc::c_int = 4 * 1024 * 1024;

/// Asks for a [`UNIX_SEND_BUFFER`]-sized send buffer on a unix socket; on failure the default
/// stays, which only costs speed.
pub fn widen_send_buffer(socket: &impl std::os::fd::AsRawFd) {
    let size = UNIX_SEND_BUFFER;
    // SAFETY: a valid descriptor and a pointer to a c_int of the length given.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        tracing::debug!("cannot widen a unix socket's send buffer: {}", std::io::Error::last_os_error());
    }
}
