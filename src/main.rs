//! The `sync-ingest` command: parse the command line, call the library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use sync_ingest::{
    app::{Mode, Service},
    auth::api_key,
    config::Settings,
    store::{self, api_keys},
    telemetry,
};
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "sync-ingest",
    version,
    about = "Bulk synchronization API for manufacturing data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Run the api and a worker in one process.
    All,
    /// Run the HTTP front only.
    Api,
    /// Run a worker only.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// `sync-ingest X …` runs the tool `sync-ingest-X …` installed beside
    /// this binary (or on PATH): `push` (the bulk loader), `jobs` (your
    /// jobs, newest first), `bench` (the benchmark).
    #[command(external_subcommand)]
    Tool(Vec<OsString>),
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Issue a key; prints the key alone on stdout.
    Create {
        #[arg(long)]
        company: Uuid,
        /// sync:write and/or sync:read; repeat or separate with commas.
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        company: Option<Uuid>,
    },
    /// Revoke a key by its id or by the key itself.
    Revoke { id_or_key: String },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    telemetry::init_tracing(cli.settings.log_format);
    let settings = cli.settings;
    match cli.command {
        Command::All => run(settings, Mode::All).await,
        Command::Api => run(settings, Mode::Api).await,
        Command::Worker => run(settings, Mode::Worker).await,
        Command::Migrate => {
            store::connect_and_migrate(&settings.database_url, 1).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::ApiKey(command) => api_key_command(&settings, command).await,
        Command::Tool(args) => run_tool(&args),
    }
}

/// Replaces this process with `sync-ingest-NAME ARGS…`: the client tools
/// and the benchmark are crates of their own, so the service's binary
/// carries none of their code, and `sync-ingest push …` still works.
fn run_tool(args: &[OsString]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let Some((name, rest)) = args.split_first() else {
        bail!("no subcommand given");
    };
    let program = format!("sync-ingest-{}", name.to_string_lossy());
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(&program)))
        .filter(|path| path.is_file());
    let target = beside.map_or_else(|| OsString::from(&program), |p| p.into_os_string());
    let error = std::process::Command::new(&target).args(rest).exec();
    bail!(
        "unknown subcommand `{}`: cannot run `{program}` ({error}); the tools are built by \
         `cargo build --workspace`",
        name.to_string_lossy()
    )
}

async fn run(settings: Settings, mode: Mode) -> Result<()> {
    let service = Service::start(settings, mode)
        .await
        .context("starting sync-ingest")?;
    service.run_until_signalled().await;
    Ok(())
}

async fn api_key_command(settings: &Settings, command: ApiKeyCommand) -> Result<()> {
    let pool = store::connect_and_migrate(&settings.database_url, 2).await?;
    match command {
        ApiKeyCommand::Create {
            company,
            scopes,
            name,
        } => {
            for scope in &scopes {
                if scope != sync_ingest::auth::SCOPE_WRITE && scope != sync_ingest::auth::SCOPE_READ
                {
                    bail!("unknown scope `{scope}` (expected sync:write or sync:read)");
                }
            }
            let issued = api_key::issue(&pool, company, &scopes, name.as_deref()).await?;
            eprintln!(
                "created API key {} for company {} with scopes {}",
                issued.record.id,
                issued.record.company_guid,
                issued.record.scopes.join(",")
            );
            println!("{}", issued.token);
        }
        ApiKeyCommand::List { company } => {
            println!("id\tcompany\tscopes\tname\tcreated\trevoked");
            for key in api_keys::list(&pool, company).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    key.id,
                    key.company_guid,
                    key.scopes.join(","),
                    key.name.unwrap_or_default(),
                    key.created_at.to_rfc3339(),
                    key.revoked_at.map(|t| t.to_rfc3339()).unwrap_or_default()
                );
            }
        }
        ApiKeyCommand::Revoke { id_or_key } => {
            let id = api_key::key_id(&id_or_key);
            if !api_keys::revoke(&pool, id).await? {
                bail!("no API key with id {id}");
            }
            eprintln!("revoked API key {id}");
        }
    }
    Ok(())
}
