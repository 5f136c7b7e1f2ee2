fn main() -> std::process::ExitCode {
    distroless_guard::cli::plugin_main()
}
