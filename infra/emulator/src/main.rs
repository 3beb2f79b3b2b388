//! `handoff-emulator up --port PORT [--demo] [--template PATH]` (SPEC §5 command contract)
//! and `handoff-emulator token --scope S…` (a token from the development issuer, SPEC §6).

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use handoff_emulator::{start, EmulatorOptions};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "handoff-emulator", about = "Runs Handoff locally against an AWS emulator")]
struct Cli {
    /// How log lines look: one short line per event for people (`human`), JSON lines as
    /// Lambda writes them (`json`), or `human` when standard error is a terminal (`auto`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Auto,
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Provision the template, start every function and serve the HTTP API until Ctrl-C.
    Up {
        /// HTTP API port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Also load and invoke a demo integration and print its progress.
        #[arg(long)]
        demo: bool,
        /// The SAM template to run (default: infra/template.yaml of this workspace).
        #[arg(long)]
        template: Option<PathBuf>,
    },
    /// Print a token from the development issuer (the key under .handoff/) with the scopes asked for.
    Token {
        /// A scope to grant (repeatable): handoff:admin, handoff:invoke, handoff:operate, handoff:read.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// The token's subject (`sub`), recorded on what it changes.
        #[arg(long, default_value = "developer")]
        subject: String,
        /// How long the token is valid.
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
        /// The audience (`aud`): the template's JwtAudience.
        #[arg(long, default_value = handoff_emulator::auth::DEV_AUDIENCE)]
        audience: String,
    },
}

/// JSON lines (what the functions write in Lambda, for tools), or for a person at a terminal
/// one short line per event — time, level, message and its fields (exchange, step) — of the
/// gateway's own crates, warnings of the rest. `RUST_LOG` overrides either filter.
fn init_logging(format: LogFormat) {
    let human = match format {
        LogFormat::Auto => std::io::stderr().is_terminal(),
        LogFormat::Human => true,
        LogFormat::Json => false,
    };
    let default = if human { "warn,handoff_app=info,handoff_emulator=info" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if human {
        let time = tracing_subscriber::fmt::time::ChronoLocal::new("%H:%M:%S%.3f".into());
        // Through the terminal writer: the demo holds these lines while it draws its table.
        fmt.with_writer(handoff_emulator::terminal::TerminalLog).compact().with_target(false).with_timer(time).init();
    } else {
        fmt.with_writer(std::io::stderr).json().init();
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn interrupted() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The functions run their jq programs in child processes of this binary.
    handoff_emulator::serve_jq_sandbox_if_requested();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Up { port, demo, template } => {
            let mut options = EmulatorOptions { port, ..EmulatorOptions::default() };
            if let Some(t) = template {
                options.template_path = t;
            }
            let emulator = start(options).await.context("starting the emulator")?;
            if let Some(path) = emulator.dev_token_path() {
                println!("Development token (every scope, 12 h) in {}", path.display());
            }
            println!("Handoff API listening on {}", emulator.api_url());
            // Where the `handoff` CLI finds this API when HANDOFF_URL is not set.
            let url_file = EmulatorOptions::default().state_dir.join("api-url");
            if let Err(e) = std::fs::write(&url_file, emulator.api_url()) {
                eprintln!("could not write {}: {e}", url_file.display());
            }
            let api_url = emulator.api_url().to_string();
            let http = emulator.api_client(std::time::Duration::from_secs(10));
            let demo_task = demo.then(|| {
                tokio::spawn(async move {
                    if let Err(e) = handoff_emulator::demo::run_demo(&api_url, http).await {
                        eprintln!("demo failed: {e:#}");
                    }
                })
            });
            interrupted().await?;
            if let Some(t) = demo_task {
                t.abort();
            }
            emulator.shutdown().await;
            Ok(())
        }
        Command::Token { scopes, subject, ttl_seconds, audience } => {
            if let Some(unknown) = scopes.iter().find(|s| !handoff_emulator::auth::ALL_SCOPES.contains(&s.as_str())) {
                anyhow::bail!(
                    "--scope {unknown}: not a Handoff scope (expected {})",
                    handoff_emulator::auth::ALL_SCOPES.join(", ")
                );
            }
            let issuer = handoff_emulator::auth::DevIssuer::load_or_create(&EmulatorOptions::default().state_dir)?;
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            println!("{}", issuer.mint(&subject, &scopes, &audience, std::time::Duration::from_secs(ttl_seconds))?);
            Ok(())
        }
    }
}
