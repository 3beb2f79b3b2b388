//! The jq sandbox the end-to-end tests' emulator starts (a test binary's `main` belongs
//! to libtest, so it cannot be one itself). Started by Handoff, never by hand.
fn main() {
    handoff_emulator::serve_jq_sandbox_if_requested();
    eprintln!("handoff-jq-sandbox is started by Handoff's functions, not by hand");
    std::process::exit(2);
}
