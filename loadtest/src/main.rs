//! contender-loadtest: the load generator and the baselines that put the
//! gateway's numbers in context.
//!
//! - `http`: closed-loop (`--concurrency`) or open-loop (`--rate`) HTTP load
//!   against one URL, latency percentiles from an HDR histogram; any failed
//!   request is printed and fails the run.
//! - `floor`: a bare axum server that only decodes the V2 body and answers a
//!   fixed response: the HTTP + JSON floor a gateway cannot beat.
//! - `inprocess`: the model called directly from OS threads: the engine
//!   floor, with no HTTP at all.
//! - `body`: writes V2 request bodies from the held-out rows.
//! - `wait`: polls a URL until it answers 200 (bounded), for scripts.
//! - `table`: the markdown comparison table from a directory of results.
//! - `compare`: several paths (gateway configurations) side by side in
//!   interleaved rounds, paired ratios against the first: closed-loop
//!   throughput, or open-loop latency at a share of measured capacity;
//!   with `--pid`, the CPU each server process spends per request.
//! - `feedback`: label ingestion rate (single and batched posts) after
//!   preparing request ids with real inference requests.
//! - `swap`: latency and failures around promotions and rollbacks made
//!   through the admin API under open-loop load.

mod body;
mod compare;
mod cpu;
mod feedback;
mod floor;
mod http;
mod inprocess;
mod report;
mod swap;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "contender-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load an HTTP endpoint (POST the body file) and report throughput and latency.
    Http(http::Args),
    /// Serve the HTTP + JSON floor: decode the V2 body, answer a fixed response.
    Floor(floor::Args),
    /// Run the model in-process from OS threads (no HTTP) and report the same way.
    Inprocess(inprocess::Args),
    /// Write a V2 inference request body from the held-out rows.
    Body(body::Args),
    /// Wait until a URL answers 200 OK, with a bounded number of tries.
    Wait(http::WaitArgs),
    /// Print the markdown comparison table from a directory of JSON results.
    Table(table::Args),
    /// Load several paths side by side in interleaved rounds and compare them with the first.
    Compare(compare::Args),
    /// Measure label ingestion (single and batched feedback posts) with real request ids.
    Feedback(feedback::Args),
    /// Measure latency and failures while a champion is promoted and rolled back under load.
    Swap(swap::Args),
}

/// The gateway's allocator, so that the floor runs on the same stack.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Http(args) => http::run(&args),
        Command::Floor(args) => floor::run(&args),
        Command::Inprocess(args) => inprocess::run(&args),
        Command::Body(args) => body::run(&args),
        Command::Wait(args) => http::wait(&args),
        Command::Table(args) => table::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Feedback(args) => feedback::run(&args),
        Command::Swap(args) => swap::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("contender-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
