//! `cadenza`: one binary for every role. See `cadenza --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = cadenza::cli::Cli::parse();
    let access = match &args.command {
        cadenza::cli::Command::Edge(edge) => edge.access_log_file.as_deref(),
        cadenza::cli::Command::Up {
            access_log_file, ..
        } => access_log_file.as_deref(),
        _ => None,
    };
    let access = match access
        .map(cadenza::access_file::AccessFile::open)
        .transpose()
    {
        Ok(file) => file,
        Err(e) => {
            eprintln!("error: cannot open the access log file: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    cadenza::commands::init_logging(args.verbose, args.log_json, access.clone());
    match cadenza::commands::run(args, access).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
