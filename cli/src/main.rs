//! `cadenza`: one binary for every role. See `cadenza --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = cadenza::cli::Cli::parse();
    cadenza::commands::init_logging(args.verbose, args.log_json);
    match cadenza::commands::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
