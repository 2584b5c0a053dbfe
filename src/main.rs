//! The `brokerd` binary: command line, logging, signals. Everything else is in the library.

mod prompt;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use brokerd::config::DEFAULT_CONFIG_TOML;
use brokerd::ops::sd_notify::{self, Notifier};
use brokerd::Config;
use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// brokerd: an MQTT 3.1.1 broker.
///
/// With no arguments it runs on the built-in defaults (listen on 127.0.0.1:1883, anonymous
/// clients allowed), which are exactly config/broker.toml (see --print-default-config).
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Args {
    /// Read the configuration from this TOML file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Only validate this configuration file, the password and ACL files it names and (with
    /// persistence on) its data directory, then exit (0 if valid) saying whether anonymous
    /// clients would be accepted. Binds nothing.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "print_default_config"])]
    check_config: Option<PathBuf>,
    /// Print the commented default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Add a user to a Mosquitto password file or change their password. Writes a `$7$` entry
    /// (PBKDF2-HMAC-SHA512, 210,000 iterations, 64-byte random salt, as Mosquitto 2.1 writes;
    /// Mosquitto 2.0 reads only 12-byte salts); keeps every other line; creates the file with
    /// mode 0600.
    Passwd {
        /// The password file (`[auth] password_file`).
        file: PathBuf,
        /// The username.
        user: String,
        /// Read the password from one line of standard input instead of asking twice on the
        /// terminal.
        #[arg(long)]
        password_stdin: bool,
        /// PBKDF2 iterations (1000..=10000000; default 210000). Each login costs about that
        /// many HMAC-SHA512 rounds (~0.12 s of one core at 210000).
        #[arg(long, value_name = "N")]
        iterations: Option<u32>,
    },
    /// Probe a running broker's admin port: GET /healthz, exit 0 on 200 and 1 otherwise, saying
    /// why. Needs no shell or curl (the Docker HEALTHCHECK). The address is `[http] bind` of
    /// the configuration (0.0.0.0 and [::] are probed on loopback), or --url.
    Health {
        /// Read `[http] bind` from this TOML file (default: the built-in defaults).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Probe this URL instead, e.g. http://127.0.0.1:8081/healthz.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Connect and answer timeout, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brokerd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(args: Args) -> anyhow::Result<()> {
    if let Some(Command::Passwd {
        file,
        user,
        password_stdin,
        iterations,
    }) = &args.command
    {
        let password = prompt::read_password(*password_stdin)?;
        let added = brokerd::set_password(file, user, &password, *iterations)?;
        let what = if added { "added" } else { "updated" };
        println!("{}: {what} user {user}", file.display());
        return Ok(());
    }
    if let Some(Command::Health {
        config,
        url,
        timeout_ms,
    }) = &args.command
    {
        return health(config.as_deref(), url.clone(), *timeout_ms);
    }
    if args.print_default_config {
        print!("{DEFAULT_CONFIG_TOML}");
        return Ok(());
    }
    if let Some(path) = args.check_config {
        let config = Config::load(&path)?;
        brokerd::check(&config).with_context(|| path.display().to_string())?;
        println!("{}: ok", path.display());
        println!("{}", brokerd::anonymous_rule(&config));
        return Ok(());
    }
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let log_level = init_tracing(&config.log)?;
    let source = args.config.as_ref().map_or_else(
        || "built-in defaults".to_owned(),
        |p| p.display().to_string(),
    );
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        config = %source,
        "brokerd starting"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        // Installed before the listener is announced: a SIGTERM right after `listening on`
        // must shut down cleanly, and a SIGHUP must not kill the process (its default action).
        let notifier = Notifier::from_env();
        let shutdown = shutdown_signal().context("installing signal handlers")?;
        let shutdown = {
            let notifier = notifier.clone();
            async move {
                shutdown.await;
                notify(&notifier, "STOPPING=1\nSTATUS=shutting down");
            }
        };
        let reload = match &args.config {
            Some(path) => brokerd::ReloadHandle::with_config_file(path.clone(), log_level),
            None => brokerd::ReloadHandle::new(),
        };
        forward_hangups(reload.clone(), args.config.is_some(), config.tls.enabled)
            .context("installing the SIGHUP handler")?;
        brokerd::run(config, shutdown, reload, |at| {
            // The MQTT listener's line comes first and keeps its form (scripts read it).
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {}", at.mqtt);
            if let Some(tls) = at.tls {
                let _ = writeln!(out, "listening tls on {tls}");
            }
            if let Some(http) = at.http {
                let _ = writeln!(out, "listening http on {http}");
            }
            if let Some(ws) = at.ws {
                let _ = writeln!(out, "listening ws on {ws}");
            }
            let _ = out.flush();
            // Every listener is bound and the store is loaded: `run` calls this only then.
            let mut status = format!("listening on {}", at.mqtt);
            if let Some(tls) = at.tls {
                status.push_str(&format!(", tls on {tls}"));
            }
            if let Some(ws) = at.ws {
                status.push_str(&format!(", ws on {ws}"));
            }
            notify(
                &notifier,
                &format!("READY=1\n{}", sd_notify::status(&status)),
            );
        })
        .await?;
        anyhow::Ok(())
    })
}

/// `brokerd health`: one probe of /healthz; Ok (exit 0) only on a 200.
fn health(
    config: Option<&std::path::Path>,
    url: Option<String>,
    timeout_ms: u64,
) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url,
        None => {
            let config = match config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            if !config.http.enabled {
                anyhow::bail!("[http] enabled = false: no admin port to probe (use --url)");
            }
            format!("http://{}/healthz", config.http_bind_addr())
        }
    };
    let limit = std::time::Duration::from_millis(timeout_ms.max(1));
    let status = brokerd::probe(&url, limit).with_context(|| format!("unhealthy: {url}"))?;
    println!("healthy: {url}: {status}");
    Ok(())
}

/// Tells the service manager (systemd, `Type=notify`) `state`, when there is one; a failure
/// is logged and otherwise ignored (the manager's own timeout then decides).
fn notify(notifier: &Option<Notifier>, state: &str) {
    if let Some(n) = notifier {
        if let Err(e) = n.notify(state) {
            tracing::warn!(error = %e, "sd_notify: cannot reach $NOTIFY_SOCKET");
        }
    }
}

/// Logs go to stderr (stdout carries only the `listening on ADDR` lines), as text or one JSON
/// object per line; RUST_LOG wins over the configured level. Returns what a reload calls to
/// change the level (a no-op while RUST_LOG is set).
fn init_tracing(log: &brokerd::config::LogConfig) -> anyhow::Result<brokerd::LogLevelHook> {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = match &rust_log {
        Some(v) => EnvFilter::try_new(v).with_context(|| format!("invalid RUST_LOG {v:?}"))?,
        None => EnvFilter::try_new(&log.level)
            .with_context(|| format!("invalid log.level {:?}", log.level))?,
    };
    // The filter sits behind a reload handle; callsites are re-evaluated only when it changes,
    // so a disabled debug! on the message path stays a cached "never".
    let (filter, handle) = reload::Layer::<EnvFilter, Registry>::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let fmt = match log.format {
        brokerd::config::LogFormat::Text => fmt.boxed(),
        brokerd::config::LogFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    Ok(std::sync::Arc::new(move |level: &str| {
        if rust_log.is_some() {
            tracing::info!(
                level,
                "log.level changed, but RUST_LOG is set and stays in force"
            );
            return Ok(());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| format!("log.level {level:?}: {e}"))?;
        handle
            .reload(filter)
            .map_err(|e| format!("log.level {level:?}: {e}"))
    }))
}

/// Installs SIGINT and SIGTERM handlers now; the returned future resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Installs a SIGHUP handler now; each SIGHUP asks `reload` (see `ReloadHandle`) and is
/// logged. The broker keeps running.
#[cfg(unix)]
fn forward_hangups(reload: brokerd::ReloadHandle, file: bool, tls: bool) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if file && tls {
                tracing::info!("SIGHUP received: reloading the TLS certificate, key and CA files with the configuration file");
            } else if file {
                tracing::info!("SIGHUP received: reloading the configuration file");
            } else if tls {
                tracing::info!("SIGHUP received: no configuration file (built-in defaults); reloading the TLS certificate, key and CA files");
            } else {
                tracing::info!("SIGHUP received: nothing to reload (built-in defaults, no --config file); still running");
            }
            reload.reload();
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn forward_hangups(_reload: brokerd::ReloadHandle, _file: bool, _tls: bool) -> std::io::Result<()> {
    Ok(())
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
