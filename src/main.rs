use std::io::IsTerminal;

use clap::Parser;

use bulk_import::app::{Application, shutdown_signal};
use bulk_import::cli;
use bulk_import::config::{Cli, Command, LogFormat};

fn main() -> std::process::ExitCode {
    // Before the runtime starts any thread.
    flat_malloc();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    let args = Cli::parse();
    let result = match args.command {
        Command::Serve(serve) => {
            init_tracing(serve.log_format);
            let served = match Application::bind(serve).await {
                Ok(app) => app.run_until(shutdown_signal()).await,
                Err(e) => Err(e),
            };
            return match served {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "the server stopped");
                    eprintln!("error: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Command::Upload(a) => cli::upload(a).await,
        Command::Get(a) => cli::get(a).await,
        Command::List(a) => cli::list(a).await,
        Command::Watch(a) => cli::watch(a).await,
        Command::Template(a) => cli::template(a).await,
        Command::Errors(a) => cli::errors(a).await,
        Command::Cancel(a) => cli::cancel(a).await,
        Command::Revert(a) => cli::revert(a).await,
        Command::Users(a) => cli::users(a).await,
    };
    // Exit codes: see `cli::Outcome` (0, 2 for Completed - Partial, 1 for the rest).
    match result {
        Ok(outcome) => std::process::ExitCode::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: not in files, pipes, or log collectors.
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Keeps glibc from holding on to freed batch buffers. By default glibc raises its mmap
/// threshold each time a large block is freed, after which blocks of a few megabytes (each batch
/// has some) come from the heap and fragment it: peak RSS then grew with the file (72 MiB for
/// a 20 MiB upload, 111 MiB for 199 MiB). A fixed threshold maps them on their own and returns
/// them on free: 66 and 71 MiB.
fn flat_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; `main` calls it before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
