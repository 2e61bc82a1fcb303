//! The `berth` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berth::config::{Overrides, Settings};
use berth::metadata::sql::SqlMetadata;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "An OCI container registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(ConfigArgs),
    /// Print the effective configuration (secrets masked) and exit; fails on a bad setting.
    CheckConfig(ServeArgs),
    /// Remove what abandoned uploads left in the blob store (multipart uploads, partial
    /// objects) once they are older than the upload idle timeout, and exit. `berth serve`
    /// does this on its own every few minutes.
    Gc(ServeArgs),
}

#[derive(Args)]
struct ConfigArgs {
    /// TOML configuration file (also `BERTH_CONFIG`).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on (also `BERTH_LISTEN`).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory of the embedded backends (also `BERTH_DATA_DIR`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl ServeArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let overrides = Overrides { listen: self.listen.clone(), data_dir: self.data_dir.clone() };
        Settings::load(self.config.config.as_deref(), &overrides).context("invalid configuration")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let settings = args.settings()?;
            berth::telemetry::init(&settings);
            actix_web::rt::System::new().block_on(berth::server::serve(settings))
        }
        Command::Migrate(args) => {
            let settings =
                Settings::load(args.config.as_deref(), &Overrides::default()).context("invalid configuration")?;
            berth::telemetry::init(&settings);
            actix_web::rt::System::new().block_on(async {
                std::fs::create_dir_all(&settings.data_dir)?;
                SqlMetadata::connect(&settings.database_url(), true).await?;
                println!("migrations applied");
                Ok(())
            })
        }
        Command::Gc(args) => {
            let settings = args.settings()?;
            berth::telemetry::init(&settings);
            actix_web::rt::System::new().block_on(async {
                let registry = berth::server::build_registry(&settings).await?;
                let discarded = registry.sweep_uploads().await;
                println!("discarded {discarded} abandoned upload(s)");
                Ok(())
            })
        }
        Command::CheckConfig(args) => {
            let settings = args.settings()?;
            print!("{}", toml::to_string(&settings.masked()).context("cannot render settings")?);
            Ok(())
        }
    }
}
