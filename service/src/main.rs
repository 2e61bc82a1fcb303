//! The `berth` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berth::config::{Overrides, Settings};
use berth::metadata::sql::SqlMetadata;
use berth::registry::lifecycle::{Decision, RunOptions};
use berth::server::Unreachable;
use clap::{Args, Parser, Subcommand};
use std::time::Duration;

/// jemalloc rather than glibc's malloc: part buffers of many megabytes come and go with every
/// upload, and glibc keeps the memory of a burst of them long after (its mmap threshold rises
/// to their size). jemalloc's background threads give it back within seconds.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "berth", version, about = "An OCI container registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where every setting is described.
const SETTINGS_HELP: &str = "Every setting is a BERTH_* environment variable or a key of the --config file: \
see the configuration reference, docs/reference/configuration.md, and `berth check-config` for the effective values.";

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API.
    #[command(after_help = SETTINGS_HELP)]
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(ConfigArgs),
    /// Print the effective configuration (secrets masked) and exit; fails on a bad setting.
    #[command(after_help = SETTINGS_HELP)]
    CheckConfig(CheckArgs),
    /// Manage the users of the htpasswd file (BERTH_HTPASSWD).
    #[command(subcommand)]
    User(UserCommand),
    /// Ask the Berth this configuration describes whether it is ready (`GET /readyz` on its
    /// listening address); exits 0 when it is. For container health checks: the image has no
    /// curl.
    Healthcheck(HealthArgs),
    /// Remove blobs that no manifest references and no push linked within the grace time,
    /// and what abandoned uploads left in the blob store (multipart uploads, partial objects;
    /// `berth serve` also does this on its own), then exit. Safe while replicas serve.
    Gc(GcArgs),
    /// Apply the retention rules ([[retention]] in the config file) once, or with --dry-run
    /// print, per repository, what they would remove and which rule decides; `berth serve`
    /// applies them on its own every BERTH_GC_INTERVAL.
    Retention(RetentionArgs),
    /// Print each quota namespace's usage and limit, as counted; with --recount, also counted
    /// from scratch, failing if the two differ.
    Usage(UsageArgs),
}

#[derive(Args)]
struct RetentionArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print what would be removed, and remove nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct UsageArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Count every namespace again from its links, and compare.
    #[arg(long)]
    recount: bool,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user, or set a user's password: a bcrypt entry in the htpasswd file. The password
    /// is read from standard input (one line), or asked for on a terminal. An entry of another
    /// hash kind (MD5, SHA-1) is replaced, with a warning.
    Add {
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List the users of the htpasswd file, and those whose hash `berth serve` refuses.
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Remove a user from the htpasswd file.
    Remove {
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
struct HealthArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Ask this URL instead (`http://host:port/readyz`, or `/healthz` for liveness only).
    #[arg(long)]
    url: Option<String>,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Also connect to the database, the session store and the blob store, and report whether
    /// each answers (nothing is changed; exits non-zero if one does not).
    #[arg(long)]
    connect: bool,
}

#[derive(Args)]
struct GcArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Data directory of the embedded backends (also `BERTH_DATA_DIR`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
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
    /// Also apply the retention rules ([[retention]] in the config file) first.
    #[arg(long)]
    retention: bool,
    /// How long to wait for a collection a replica is running (it holds the lease) to end.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    wait: std::time::Duration,
}

impl ServeArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let overrides = Overrides { listen: self.listen.clone(), data_dir: self.data_dir.clone() };
        Settings::load(self.config.config.as_deref(), &overrides).context("invalid configuration")
    }
}

impl ConfigArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        Settings::load(self.config.as_deref(), &Overrides::default()).context("invalid configuration")
    }

    /// The htpasswd file the settings name.
    fn htpasswd(&self) -> anyhow::Result<PathBuf> {
        self.settings()?.htpasswd.context("set BERTH_HTPASSWD to the htpasswd file")
    }
}

fn main() -> ExitCode {
    // Purging runs on jemalloc's own threads, not only when something allocates again.
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
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
            let settings = args.settings()?;
            with_telemetry(settings, |settings| async move {
                std::fs::create_dir_all(&settings.data_dir)?;
                SqlMetadata::connect(&settings.database_url(), true).await?;
                println!("migrations applied");
                Ok(())
            })
        }
        Command::User(command) => user(command),
        Command::Healthcheck(args) => {
            let url = match args.url {
                Some(url) => url,
                None => format!("http://{}/readyz", reachable(&args.config.settings()?.listen)),
            };
            healthcheck(&url)
        }
        Command::Gc(args) => {
            let overrides = Overrides { listen: None, data_dir: args.data_dir.clone() };
            let settings =
                Settings::load(args.config.config.as_deref(), &overrides).context("invalid configuration")?;
            with_telemetry(settings, |settings| gc(settings, args))
        }
        Command::Retention(args) => {
            let settings = args.config.settings()?;
            with_telemetry(settings, |settings| retention(settings, args.dry_run))
        }
        Command::Usage(args) => {
            let settings = args.config.settings()?;
            with_telemetry(settings, |settings| usage(settings, args.recount))
        }
        Command::CheckConfig(args) => {
            let settings = args.serve.settings()?;
            print!("{}", toml::to_string(&settings.masked()).context("cannot render settings")?);
            if !args.connect {
                return Ok(());
            }
            with_telemetry(settings, |settings| async move {
                let backends = berth::server::check_backends(&settings).await?;
                println!();
                for b in &backends {
                    match &b.error {
                        None => println!("# {} ({}): answers", b.component, b.kind),
                        Some(e) => println!("# {} ({}): does not answer: {e}", b.component, b.kind),
                    }
                }
                let down = backends.iter().filter(|b| b.error.is_some()).count();
                anyhow::ensure!(down == 0, "{down} backend(s) do not answer");
                Ok(())
            })
        }
    }
}

/// The address to reach a listener bound to `listen` on this host at.
fn reachable(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.to_owned(),
    }
}

fn healthcheck(url: &str) -> anyhow::Result<()> {
    // Plain HTTP by hand: the check needs no TLS stack, so no CA certificates in the image.
    let rest = url.strip_prefix("http://").with_context(|| format!("{url}: the health check speaks plain http://"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let (status, body) = http_get(authority, &path).with_context(|| format!("{url} does not answer"))?;
    anyhow::ensure!((200..300).contains(&status), "{url} answered {status}: {}", body.trim());
    println!("{url}: {status}");
    Ok(())
}

fn http_get(authority: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Error, Read, Write};
    use std::net::ToSocketAddrs;
    let timeout = std::time::Duration::from_secs(4);
    let addr = authority.to_socket_addrs()?.next().ok_or_else(|| Error::other("no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: berth-healthcheck\r\n\r\n")?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| Error::other("not an HTTP response"))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

fn user(command: UserCommand) -> anyhow::Result<()> {
    use berth::auth::htpasswd;
    match command {
        UserCommand::Add { name, config } => {
            let path = config.htpasswd()?;
            let password = read_password(&name)?;
            for warning in htpasswd::add_user(&path, &name, &password).map_err(anyhow::Error::msg)? {
                eprintln!("warning: {warning}");
            }
            println!("{name} written to {}", path.display());
        }
        UserCommand::List { config } => {
            let path = config.htpasswd()?;
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            for entry in htpasswd::entries(&text).map_err(anyhow::Error::msg)? {
                match entry.weakness() {
                    None => println!("{}", entry.user),
                    Some(kind) => {
                        println!("{}\t({kind}: berth serve refuses it; set it again with berth user add)", entry.user)
                    }
                }
            }
        }
        UserCommand::Remove { name, config } => {
            let path = config.htpasswd()?;
            anyhow::ensure!(
                htpasswd::remove_user(&path, &name).map_err(anyhow::Error::msg)?,
                "{name} is not in {}",
                path.display()
            );
            println!("{name} removed from {}", path.display());
        }
    }
    Ok(())
}

async fn gc(settings: Settings, args: GcArgs) -> anyhow::Result<()> {
    let registry = berth::server::build_registry(&settings, Unreachable::Fail).await?;
    let verb = if args.dry_run { "would remove" } else { "removed" };
    if args.dry_run {
        if args.retention {
            print_decisions(&registry.plan_retention(None).await?);
        }
        let collected = registry.collect(args.grace, args.untagged, true).await?;
        if args.untagged {
            println!("{verb} {} untagged manifest(s)", collected.manifests);
        }
        println!("{verb} {} unreferenced blob(s), {} bytes", collected.blobs, collected.bytes);
        return Ok(());
    }
    let options = RunOptions {
        grace: args.grace,
        untagged: args.untagged.then_some(args.grace),
        retention: args.retention,
        blobs: true,
        batch: settings.gc_batch,
        explain: false,
    };
    let started = std::time::Instant::now();
    let report = registry.collect_under_lease(&options, args.wait).await?;
    if args.retention {
        println!("{verb} {} tag(s)", report.tags);
    }
    if args.retention {
        println!("{verb} {} manifest(s)", report.manifests);
    } else if args.untagged {
        println!("{verb} {} untagged manifest(s)", report.manifests);
    }
    println!("{verb} {} unreferenced blob(s), {} bytes", report.blobs, report.bytes);
    println!(
        "took {:.1} s; longest transaction {} ms",
        started.elapsed().as_secs_f64(),
        report.longest_transaction.as_millis()
    );
    let discarded = registry.sweep_uploads().await;
    println!("discarded {discarded} abandoned upload(s)");
    Ok(())
}

/// Decisions grouped by repository, as `berth retention --dry-run` prints them.
fn print_decisions(decisions: &[Decision]) {
    let mut last: Option<&str> = None;
    for d in decisions {
        if last != Some(d.repository.as_str()) {
            println!("{}", d.repository);
            last = Some(d.repository.as_str());
        }
        println!("  {}: {}", d.what, d.reason);
    }
}

async fn retention(settings: Settings, dry_run: bool) -> anyhow::Result<()> {
    anyhow::ensure!(!settings.retention.is_empty(), "no [[retention]] rules in the configuration");
    let registry = berth::server::build_registry(&settings, Unreachable::Fail).await?;
    if dry_run {
        let decisions = registry.plan_retention(None).await?;
        print_decisions(&decisions);
        println!("would remove {} tag(s) and manifest(s)", decisions.len());
        return Ok(());
    }
    let options =
        RunOptions { grace: Duration::ZERO, untagged: None, retention: true, blobs: false, batch: 500, explain: true };
    let report = registry.collect_under_lease(&options, Duration::from_secs(600)).await?;
    print_decisions(&report.decisions);
    println!(
        "removed {} tag(s) and {} manifest(s); their blobs go with the next collection",
        report.tags, report.manifests
    );
    Ok(())
}

async fn usage(settings: Settings, recount: bool) -> anyhow::Result<()> {
    let registry = berth::server::build_registry(&settings, Unreachable::Fail).await?;
    let counted = registry.usage().await?;
    let mut differ = 0;
    for (namespace, limit) in &registry.lifecycle().quotas {
        let Some(usage) = counted.iter().find(|u| u.namespace == *namespace) else {
            println!("{namespace}\tnot counted yet (berth serve counts it when it starts)\tlimit {limit}");
            continue;
        };
        let percent = if *limit == 0 { 100.0 } else { usage.bytes as f64 * 100.0 / *limit as f64 };
        print!("{namespace}\t{} bytes\tlimit {limit}\t{percent:.1} %", usage.bytes);
        if recount {
            let again = registry.recount_usage(namespace).await?;
            if again == usage.bytes {
                print!("\trecounted: {again}, the same");
            } else {
                print!("\trecounted: {again}, DIFFERENT");
                differ += 1;
            }
        }
        println!();
    }
    anyhow::ensure!(differ == 0, "{differ} namespace(s) counted differently from scratch");
    Ok(())
}
