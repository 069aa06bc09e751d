use clap::Parser;

use bulk_import::app::{Application, shutdown_signal};
use bulk_import::cli;
use bulk_import::config::{Cli, Command, LogFormat};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    let result = match args.command {
        Command::Serve(serve) => {
            init_tracing(serve.log_format);
            match Application::bind(serve).await {
                Ok(app) => app.run_until(shutdown_signal()).await.map_err(Into::into),
                Err(e) => Err(e.into()),
            }
        }
        Command::Upload(a) => cli::upload(a).await,
        Command::Get(a) => cli::get(a).await,
        Command::List(a) => cli::list(a).await,
        Command::Watch(a) => cli::watch(a).await,
        Command::Template(a) => cli::template(a).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
