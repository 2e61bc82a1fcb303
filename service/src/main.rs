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
    /// Manage the users of the htpasswd file (BERTH_HTPASSWD).
    #[command(subcommand)]
    User(UserCommand),
    /// Remove blobs that no manifest references and no push linked within the grace time,
    /// and what abandoned uploads left in the blob store (multipart uploads, partial objects;
    /// `berth serve` also does this on its own), then exit. Safe while replicas serve.
    Gc(GcArgs),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user, or set a user's password: a bcrypt entry in the htpasswd file. The password
    /// is read from standard input (one line), or asked for on a terminal.
    Add {
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
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

#[derive(Args)]
struct GcArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Keep blobs that a repository linked more recently than this (`30m`, `24h`, `7d`):
    /// a push uploads its layers before the manifest that references them.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    grace: std::time::Duration,
    /// List what would be removed (in the log) and remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// First remove the manifests that no tag keeps: untagged, older than the grace time, not
    /// listed by a kept index and not a referrer of a kept manifest. Off by default: a
    /// deployment may pull a manifest by digest after its tag moved on.
    #[arg(long)]
    untagged: bool,
}

impl ServeArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let overrides = Overrides { listen: self.listen.clone(), data_dir: self.data_dir.clone() };
        Settings::load(self.config.config.as_deref(), &overrides).context("invalid configuration")
    }
}

fn main() -> ExitCode {
    berth::install_crypto_provider();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One line of standard input, prompting on a terminal (without hiding the input: pipe the
/// password in to keep it off the screen).
fn read_password(name: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password for {name}: ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!password.is_empty(), "empty password");
    Ok(password)
}

/// Runs `work` on an actix runtime with logging and trace export set up, and exports the
/// spans still batched before returning: the exporter's gRPC channel lives on that runtime.
fn with_telemetry<F, Fut>(settings: Settings, work: F) -> anyhow::Result<()>
where
    F: FnOnce(Settings) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    actix_web::rt::System::new().block_on(async {
        let telemetry = berth::telemetry::init(&settings);
        let result = work(settings).await;
        telemetry.shutdown().await;
        result
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let settings = args.settings()?;
            with_telemetry(settings, berth::server::serve)
        }
        Command::Migrate(args) => {
            let settings =
                Settings::load(args.config.as_deref(), &Overrides::default()).context("invalid configuration")?;
            with_telemetry(settings, |settings| async move {
                std::fs::create_dir_all(&settings.data_dir)?;
                SqlMetadata::connect(&settings.database_url(), true).await?;
                println!("migrations applied");
                Ok(())
            })
        }
        Command::User(UserCommand::Add { name, config }) => {
            let settings =
                Settings::load(config.config.as_deref(), &Overrides::default()).context("invalid configuration")?;
            let path = settings.htpasswd.context("set BERTH_HTPASSWD to the htpasswd file to write")?;
            let password = read_password(&name)?;
            berth::auth::htpasswd::add_user(&path, &name, &password).map_err(anyhow::Error::msg)?;
            println!("{name} written to {}", path.display());
            Ok(())
        }
        Command::Gc(args) => {
            let settings = args.serve.settings()?;
            with_telemetry(settings, |settings| async move {
                let registry = berth::server::build_registry(&settings).await?;
                let verb = if args.dry_run { "would remove" } else { "removed" };
                if args.untagged {
                    let manifests = registry.collect_manifests(args.grace, args.dry_run).await?;
                    println!("{verb} {manifests} untagged manifest(s)");
                }
                let collected = registry.collect_blobs(args.grace, args.dry_run).await?;
                println!("{verb} {} unreferenced blob(s), {} bytes", collected.blobs, collected.bytes);
                if !args.dry_run {
                    let discarded = registry.sweep_uploads().await;
                    println!("discarded {discarded} abandoned upload(s)");
                }
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
