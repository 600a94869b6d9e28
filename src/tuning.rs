//! Process-wide tuning our programs apply at start.

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
