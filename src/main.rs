//! The `bulk-import` binary: `serve` runs the server, every other command is the client.
//!
//! One binary for both, so that a server's image carries the tool to operate it, and the
//! client always speaks the proto of the release it came with. The library (`bulk_import`)
//! does the work; this file only parses the command line, starts the runtime and logging, and
//! turns how a command ended into the process's exit code.
//!
//! Exit codes: `serve` exits 0 after a graceful shutdown and 1 when it cannot start or its
//! server fails; the client commands exit 0, 2 or 1 as `cli::Outcome` says; a command line
//! that clap refuses exits 64 (`cli::USAGE`), and `--help` and `--version` exit 0.

use std::io::IsTerminal;

use clap::Parser;

use bulk_import::app::{Application, shutdown_signal};
use bulk_import::cli;
use bulk_import::config::{Cli, Command, LogFormat};

/// Reads the command line, tunes the allocator for the command, then runs it on a
/// multi-threaded tokio runtime.
///
/// The runtime is built by hand rather than with `#[tokio::main]`, so that `flat_malloc`
/// runs before any worker thread exists, which its `SAFETY` comment relies on.
fn main() -> std::process::ExitCode {
    let args = match Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return refused(e),
    };
    // Before the runtime starts any thread.
    flat_malloc(&args.command);
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the command that the arguments name.
///
/// `serve` logs to stdout with `tracing` and runs until SIGTERM or Ctrl-C; its errors are both
/// logged (for the log collector) and printed to stderr (for a person at the terminal).
/// Client commands do not set up logging: their output is the answer, on stdout, and their
/// errors are one line on stderr, `error: ` first.
async fn run(args: Cli) -> std::process::ExitCode {
    if !matches!(args.command, Command::Serve(_)) {
        quiet_broken_pipe();
    }
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
        Command::Resume(a) => cli::resume(a).await,
        Command::Get(a) => cli::get(a).await,
        Command::List(a) => cli::list(a).await,
        Command::Watch(a) => cli::watch(a).await,
        Command::Template(a) => cli::template(a).await,
        Command::Errors(a) => cli::errors(a).await,
        Command::Cancel(a) => cli::cancel(a).await,
        Command::Revert(a) => cli::revert(a).await,
        Command::Users(a) => cli::users(a).await,
        Command::Invite(a) => cli::invite(a).await,
        Command::Events(a) => cli::events(a).await,
    };
    // Exit codes: see `cli::Outcome` (0, 2 for Completed - Partial, 1 for the rest).
    match result {
        Ok(outcome) => std::process::ExitCode::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

/// A command line clap did not run: help and the version (asked for, exit 0), or a usage
/// error, printed as clap writes it and exiting 64, not clap's 2, which is Completed -
/// Partial's code (a script must never read a typo as a partial import).
fn refused(error: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    let asked = matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    );
    // Fails only when stdout or stderr is gone; there is nowhere to say so then.
    let _ = error.print();
    if asked {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(cli::USAGE)
    }
}

/// Logging for `serve`: `RUST_LOG` when set (`info,h2=error` otherwise), as text or as one JSON object
/// per line (`--log-format json`, for log collectors).
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // h2 warns once per connection that resets streams too fast, which a flood turns into
        // tens of thousands of lines; the server's own lines about floods are throttled.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,h2=error"));
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
///
/// A server on SQLite also keeps one malloc arena instead of glibc's one per thread (up to
/// eight per core): memory a thread frees stays in its own arena, where no other thread reuses
/// it, and the threads that take turns at SQLite's one writer (the tokio workers, sqlx's
/// connection threads) each kept their own. A planned import's peak RSS (50 MiB, one server,
/// UPDATE and dry runs) was 94 – 98 MiB with one arena, 114 MiB with eight and up to 148 MiB
/// before, in the same times; eight plain or planned uploads at once took the same time with
/// one (8.6 – 9.4 s against 8.5 – 9.0 s, 7.8 – 8.1 s against 7.4 – 8.1 s; README, "Re-imports").
/// PostgreSQL's replicas write on several connections at once and keep glibc's default. An
/// operator's choice in the environment (`MALLOC_ARENA_MAX`, or glibc's tunable
/// `glibc.malloc.arena_max` in `GLIBC_TUNABLES`) is left alone.
fn flat_malloc(command: &Command) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let one_arena = match command {
            Command::Serve(serve) => {
                bulk_import::store::is_embedded(&serve.database_url) && !arenas_chosen()
            }
            _ => false,
        };
        // SAFETY: mallopt only sets an allocator parameter; `main` calls it before any other
        // thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
            if one_arena {
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = command;
}

/// Whether the environment sets glibc's number of arenas, which then stands.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn arenas_chosen() -> bool {
    std::env::var_os("MALLOC_ARENA_MAX").is_some_and(|value| !value.is_empty())
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"))
}

/// A client command whose output goes to a pipe that closes early (`bulk-import users | head`)
/// ends quietly, as Unix tools do, rather than with a panic's message: the failed write to
/// stdout ends the process by SIGPIPE, as theirs. SIGPIPE stays ignored until then (Rust's
/// default) rather than restored at start: restoring its
/// default action also killed the client, with exit 141 and no word, when a server closed the
/// connection under a write (a server at its connection limit does), which broke the
/// documented exit codes.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            #[cfg(unix)]
            // SAFETY: `signal` sets SIGPIPE's disposition to its default and `raise` sends it
            // to this process, which it ends; no handler runs.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
            std::process::exit(141);
        }
        default(info);
    }));
}
