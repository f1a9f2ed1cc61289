//! `cadenza`: one binary for every role. See `cadenza --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = cadenza::cli::Cli::parse();
    cadenza::commands::init_logging(args.verbose);
    cadenza::commands::run(args).await
}
