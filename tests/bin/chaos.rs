//! The chaos run (issue 13, README "Measuring"):
//! `cargo run --release -p handoff-e2e --bin chaos -- --exchanges 10000 --seed 7`.
//!
//! Starts moto, a fault proxy in front of it, the loopback systems, and the gateway as a
//! child process of this binary (its `gateway` mode), which it kills with SIGKILL and starts
//! again during the load; then drains and checks (see `handoff_e2e::chaos`). Prints the
//! figures and every counterexample; exits 1 when there is one.

use clap::{Parser, Subcommand};
use handoff_e2e::chaos::{self, ChaosConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "chaos", about = "Runs exchanges under faults and checks that nothing is lost")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Exchanges started over the API.
    #[arg(long, default_value_t = 1000)]
    exchanges: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Exchanges started per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// SIGKILLs of the gateway during the load (default: one per 500 exchanges, 2 to 20).
    #[arg(long)]
    kills: Option<usize>,
    /// Share of DynamoDB/SQS/S3 requests that meet a fault.
    #[arg(long, default_value_t = 0.01)]
    aws_fault_rate: f64,
    /// Share of target and partner requests that meet a fault.
    #[arg(long, default_value_t = 0.05)]
    target_fault_rate: f64,
    /// Seconds after the load within which every exchange must be final.
    #[arg(long, default_value_t = 300)]
    drain_seconds: u64,
    /// SQS pollers per queue in the gateway (Lambda scales out; the emulator does not).
    #[arg(long, default_value_t = 4)]
    pollers: usize,
}

#[derive(Subcommand)]
enum Mode {
    /// (internal) The gateway process the run starts and kills.
    #[command(hide = true)]
    Gateway {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        aws_endpoint: String,
        #[arg(long)]
        template: PathBuf,
        #[arg(long)]
        claim_lease_seconds: u64,
        #[arg(long)]
        pollers: usize,
        #[arg(long)]
        state_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    // The gateway's functions start their jq sandboxes from this binary.
    handoff_emulator::serve_jq_sandbox_if_requested();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(Mode::Gateway { port, aws_endpoint, template, claim_lease_seconds, pollers, state_dir }) = cli.mode {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .init();
        return runtime.block_on(chaos::gateway::serve(
            port,
            aws_endpoint,
            template,
            claim_lease_seconds,
            pollers,
            state_dir,
        ));
    }
    let work_dir = handoff_emulator::moto::state_dir().join(format!("chaos-{}", std::process::id()));
    let mut config = ChaosConfig::new(cli.exchanges, cli.seed, work_dir.clone(), std::env::current_exe()?);
    config.rate_per_second = cli.rate;
    if let Some(kills) = cli.kills {
        config.kills = kills;
    }
    config.proxy_faults.request_fault_rate = cli.aws_fault_rate;
    config.target_fault_rate = cli.target_fault_rate;
    config.drain = Duration::from_secs(cli.drain_seconds);
    config.pollers_per_source = cli.pollers;
    println!(
        "chaos: {} exchanges at {}/s, {} kills, seed {}, {} pollers per queue (gateway log: {})",
        config.exchanges,
        config.rate_per_second,
        config.kills,
        config.seed,
        config.pollers_per_source,
        work_dir.join("gateway.log").display()
    );
    let report = runtime.block_on(chaos::run(config))?;
    println!("{report}");
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}
