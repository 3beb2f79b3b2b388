//! `handoff`: the operator's command line over the Handoff API, with the verbs operators
//! know from `temporal workflow` and `aws stepfunctions`. Tables for people (`--output
//! table`, the default), the API's JSON for scripts (`--output json`), and exit codes that
//! say what happened (see [`client::CliError::exit_code`]).

mod client;
mod commands;
mod render;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "handoff", version, about = "Operate a Handoff integration gateway")]
pub struct Cli {
    /// The API's base URL [default: the running emulator's, else http://127.0.0.1:3000]
    #[arg(long, global = true, env = "HANDOFF_URL")]
    url: Option<String>,
    /// A bearer token [default: in a checkout, the emulator's .handoff/dev-token]
    #[arg(long, global = true, env = "HANDOFF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Tables for people, or the API's JSON for scripts
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Group,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Group {
    /// Integration definitions and their endpoints
    #[command(subcommand, visible_alias = "integration")]
    Integrations(IntegrationCommand),
    /// Runs of integrations: list, read, follow, repair
    #[command(subcommand, visible_alias = "exchange")]
    Exchanges(ExchangeCommand),
    /// The error list: what failed, why, and what fixes it
    #[command(subcommand, visible_alias = "error")]
    Errors(ErrorCommand),
    /// An event-based integration's queue
    #[command(subcommand, visible_alias = "event")]
    Events(EventCommand),
    /// Metadata mappings used by transformation steps
    #[command(subcommand, visible_alias = "mapping")]
    Mappings(MappingCommand),
}

#[derive(Subcommand)]
enum IntegrationCommand {
    /// Every version of every integration, with its endpoint's status
    List,
    /// One integration: its endpoint, schedule and versions
    Show { code: String },
    /// Stores a definition (a JSON or YAML file, `-` for stdin) as a new version
    Define { file: String },
    /// Lets the endpoint run
    Enable {
        code: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Holds the endpoint: nothing starts and nothing leaves until enabled
    Disable {
        code: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resumes a halted endpoint (held handoffs go on)
    Resume {
        code: String,
        #[arg(long)]
        reason: Option<String>,
        /// Also recover the exchanges whose failures halted it
        #[arg(long)]
        recover_failed: bool,
    },
}

/// Which exchanges: the API filters by integration and status; `--since` and `--param`
/// are applied here while paging (newest first).
#[derive(Args, Clone, Default)]
struct ExchangeFilter {
    /// Only this integration's exchanges
    #[arg(long)]
    integration: Option<String>,
    /// Only this status (a name such as Failed, or its code such as F)
    #[arg(long)]
    status: Option<String>,
    /// Only exchanges created at or after this time (RFC 3339, or an age: 30m, 2h, 7d)
    #[arg(long)]
    since: Option<String>,
    /// Only exchanges whose parameter KEY has VALUE (repeatable)
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// At most this many
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

#[derive(Subcommand)]
enum ExchangeCommand {
    /// Starts an exchange of an integration
    Start {
        code: String,
        /// A parameter (repeatable)
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// The input: a file (`-` for stdin), sent as JSON if it parses as JSON, else as text
        #[arg(long)]
        payload: Option<String>,
        /// Run this version rather than the highest enabled one
        #[arg(long)]
        version: Option<u32>,
        /// Wait up to this many seconds for it to be final, then show it
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// Exchanges, newest first
    List(ExchangeFilter),
    /// One exchange: where it stands, each step with its attempts and duration
    Show { id: String },
    /// Its System and User log lines
    Logs { id: String },
    /// Redraws the exchange until it is final (exit 0 when Completed, 5 otherwise)
    Watch {
        id: String,
        /// How often to read it, in milliseconds
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Recovers one Failed/TimedOut exchange, or with --filter every one that matches
    Recover {
        /// The exchange (omit with --filter)
        #[arg(required_unless_present = "filter")]
        id: Option<String>,
        /// Recover onto this version
        #[arg(long)]
        version: Option<u32>,
        /// Recover every recoverable exchange the filter selects (Failed and TimedOut unless --status)
        #[arg(long, conflicts_with = "id")]
        filter: bool,
        #[command(flatten)]
        which: ExchangeFilter,
        /// Do not ask for confirmation
        #[arg(long, short)]
        yes: bool,
    },
    /// Runs a step again now
    Retry { id: String, step: String },
}

#[derive(Subcommand)]
enum ErrorCommand {
    /// Error-list entries, newest first
    List {
        #[arg(long)]
        integration: Option<String>,
        /// business or system
        #[arg(long)]
        classification: Option<String>,
        /// open or resolved
        #[arg(long)]
        state: Option<String>,
        /// Only errors at or after this time (RFC 3339, or an age: 30m, 2h, 7d)
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Resolves an entry with a note saying what was fixed
    Resolve {
        error_id: String,
        #[arg(long)]
        note: String,
    },
}

#[derive(Subcommand)]
enum EventCommand {
    /// Sends events: a JSON or YAML file (`-` for stdin) or --data
    Send {
        code: String,
        file: Option<String>,
        /// The events document inline, e.g. '{"key": "p-1", "data": {...}}'
        #[arg(long, conflicts_with = "file")]
        data: Option<String>,
    },
    /// The queue: pending events, oldest first
    List {
        code: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum MappingCommand {
    /// Prints a mapping
    Get { name: String },
    /// Creates or replaces a mapping from a JSON or YAML file (`-` for stdin)
    Put { name: String, file: String },
}

/// Runs the command line and says how it ended.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("handoff: cannot start: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
