//! `sync-ingest-bench`, also run as `sync-ingest bench`: the benchmark.

use clap::Parser;
use sync_ingest::{config::Settings, telemetry};

#[derive(Parser)]
#[command(
    name = "sync-ingest bench",
    version,
    about = "Measure intake, drain and end-to-end speed against raw limits"
)]
struct Cli {
    #[command(flatten)]
    bench: sync_ingest_bench::BenchArgs,
    #[command(flatten)]
    settings: Settings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_tracing(cli.settings.log_format);
    let report = sync_ingest_bench::run(cli.bench, cli.settings).await?;
    println!("{}", sync_ingest_bench::summary(&report));
    Ok(())
}
