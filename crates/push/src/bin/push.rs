//! `sync-ingest-push`, also run as `sync-ingest push`: the bulk loader.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "sync-ingest push",
    version,
    about = "Load files of items into sync-ingest: batches, retries, progress"
)]
struct Cli {
    #[command(flatten)]
    push: sync_ingest_push::PushArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    std::process::exit(sync_ingest_push::run(cli.push).await.exit_code());
}
