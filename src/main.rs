/// mimalloc rather than the C library's allocator: the release image is a
/// static musl binary, and musl's allocator serializes threads; the webhook
/// allocates on every review from every worker thread.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    distroless_guard::cli::main()
}
