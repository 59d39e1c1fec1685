//! The `standin` binary: everything is in the library; see `standin --help`.

fn main() -> std::process::ExitCode {
    limit_malloc_retention();
    standin::cli::main()
}

/// glibc's malloc, tuned for a long-running node before any other thread starts
/// (issue 22 item 5, the active's peak RSS while it serves an initial sync):
///
/// - at most 2 arenas (glibc's default is 8 per core): each thread that meets a busy
///   arena otherwise gets one of its own, and the memory a capture group or a Pull
///   batch freed in one arena is not reused by the next thread;
/// - a fixed trim threshold of 128 KiB: glibc otherwise raises it (up to 64 MiB) after
///   the first large block is freed, and keeps what a large group freed at the top of
///   the heap for good;
/// - a fixed mmap threshold of 4 MiB: fixing the trim threshold also fixes glibc's
///   mmap threshold at its 128 KiB start, so every chunk buffer above that was a
///   fresh mmap, faulted in and zeroed, then unmapped — the large initial sync (8 x
///   128 MiB) then took about 1.6x the CPU on both nodes and ran ~30% slower (found by
///   bisecting to the commit that set the trim threshold). At 4 MiB chunk buffers come
///   from the heap again: passive 6.4 -> 3.9 CPU s, 165 -> 230 MB/s; the active's peak
///   RSS serving the small initial sync stayed under 100 MB (93 MB).
///
/// Measured with the env equivalents (MALLOC_ARENA_MAX=2, MALLOC_TRIM_THRESHOLD_=131072)
/// on the active after recording 20,000 × 4 KiB files, then serving them to a new
/// passive, without the sled change of the same commit: peak RSS 118 -> 85-103 MB
/// (over runs); with it, the `small` benchmark's active peaked at 88 and 86 MB.
fn limit_malloc_retention() {
    // SAFETY: mallopt only sets malloc's parameters; called first thing in main,
    // before any thread exists. A refused setting (another libc) changes nothing.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
    }
}
