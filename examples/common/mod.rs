//! What every example's `main` does the same way: its logs, and the end
//! of its hub.

/// Prints logs on stderr, filtered by `RUST_LOG` (default: warnings, and
/// graphex's own info lines), e.g. `RUST_LOG=graphex_runtime=debug`.
pub fn init_logs() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,graphex=info,graphex_runtime=info")),
        )
        .init();
}

/// Ends the process with status 1 if the hub did not stop cleanly
/// ([`graphex::Hub::stopped`]): a task outlived the stop timeout, or the
/// channel layer could not send what it held.
pub fn exit_unless_clean(stopped: graphex::Stopped) {
    if !stopped.is_clean() {
        eprintln!("graphex hub stopped with work left: {stopped:?}");
        std::process::exit(1);
    }
}
