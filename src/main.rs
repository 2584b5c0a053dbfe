//! The `brokerd` binary: command line, logging, signals. Everything else is in the library.

mod prompt;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use brokerd::config::DEFAULT_CONFIG_TOML;
use brokerd::Config;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    init_tracing(&config.log.level)?;
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
        let shutdown = shutdown_signal().context("installing signal handlers")?;
        let reload = brokerd::ReloadHandle::new();
        forward_hangups(reload.clone(), config.tls.enabled)
            .context("installing the SIGHUP handler")?;
        brokerd::run(config, shutdown, reload, |at| {
            // The MQTT listener's line comes first and keeps its form (scripts read it).
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {}", at.mqtt);
            if let Some(tls) = at.tls {
                let _ = writeln!(out, "listening tls on {tls}");
            }
            if let Some(ws) = at.ws {
                let _ = writeln!(out, "listening ws on {ws}");
            }
            let _ = out.flush();
        })
        .await?;
        anyhow::Ok(())
    })
}

/// Logs go to stderr (stdout carries only the `listening on ADDR` lines); RUST_LOG wins over
/// the configured level.
fn init_tracing(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => {
            EnvFilter::try_new(&v).with_context(|| format!("invalid RUST_LOG {v:?}"))?
        }
        _ => EnvFilter::try_new(level).with_context(|| format!("invalid log.level {level:?}"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    Ok(())
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

/// Installs a SIGHUP handler now; each SIGHUP reloads the TLS files (when TLS is enabled) and
/// is logged. The broker keeps running. The password and ACL files and the rest of the
/// configuration need a restart.
#[cfg(unix)]
fn forward_hangups(reload: brokerd::ReloadHandle, tls: bool) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tls {
                tracing::info!("SIGHUP received: reloading the TLS certificate, key and CA files (configuration reload is not supported yet, password and ACL files included: restart to apply them)");
                reload.reload();
            } else {
                tracing::info!("SIGHUP received: nothing to reload (TLS is off; configuration reload is not supported yet, password and ACL files included); still running");
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn forward_hangups(_reload: brokerd::ReloadHandle, _tls: bool) -> std::io::Result<()> {
    Ok(())
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
