/// mimalloc rather than the C library's allocator: the release image is a
/// static musl binary, and musl's allocator serializes threads; the webhook
/// allocates on every review from every worker thread.
#[cfg(not(feature = "heap-profile"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With the `heap-profile` feature: every allocation recorded by dhat.
#[cfg(feature = "heap-profile")]
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

fn main() -> std::process::ExitCode {
    #[cfg(feature = "heap-profile")]
    heap_profile::start();
    distroless_guard::cli::main()
}

/// The heap profile: recorded from the start; SIGUSR2 writes it (the bytes
/// live at that moment, and at the peak, per allocation site) to
/// `$DISTROLESS_GUARD_HEAP_PROFILE` (default `dhat-heap.json`) and stops
/// recording. Only in a build with the `heap-profile` feature.
#[cfg(feature = "heap-profile")]
mod heap_profile {
    pub fn start() {
        let file = std::env::var("DISTROLESS_GUARD_HEAP_PROFILE").unwrap_or_else(|_| "dhat-heap.json".into());
        let profiler = dhat::Profiler::builder().file_name(&file).build();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let Ok(runtime) = runtime else { return };
            runtime.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                if let Ok(mut usr2) = signal(SignalKind::user_defined2()) {
                    usr2.recv().await;
                }
            });
            // Dropping the profiler writes the file.
            drop(profiler);
            eprintln!("heap profile written to {file}");
        });
    }
}
