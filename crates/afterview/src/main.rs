//! `afterview`: a thin entry point over the library.

/// mimalloc rather than glibc's malloc: the worker and the API allocate many short-lived
/// buffers per task (envelopes, JSON, Redis replies); in a drain profile glibc's malloc and free
/// took a quarter of the worker's CPU. Built with `no_thp` (the workspace's `Cargo.toml`): with
/// mimalloc's transparent huge pages, faulting and zeroing 2 MiB pages over and over took a
/// tenth of the worker's drain CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    afterview::entry::main()
}
