//! `sync-ingest-jobs`, also run as `sync-ingest jobs`: your company's jobs,
//! newest first, a line each.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "sync-ingest jobs",
    version,
    about = "List your company's sync jobs, newest first"
)]
struct Cli {
    #[command(flatten)]
    jobs: sync_ingest_push::jobs::JobsArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    std::process::exit(sync_ingest_push::jobs::run(cli.jobs).await);
}
