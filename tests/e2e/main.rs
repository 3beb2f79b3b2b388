//! End-to-end tests: every test drives the local emulator over HTTP, with real loopback
//! servers as the external systems. One emulator (and one moto) serves the whole binary.

mod activities;
mod api;
mod clock;
mod console;
mod contract;
mod deliveries;
mod endpoints;
mod errors;
mod events;
mod jobs;
mod metrics;
mod operations;
mod pipeline;
mod schedule;
mod security;
mod signoff;
mod subflows;
mod telling;
mod transform;
mod unrouted;
