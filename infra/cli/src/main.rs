//! The `handoff` binary: see [`handoff_cli`].

fn main() -> std::process::ExitCode {
    handoff_cli::main()
}
