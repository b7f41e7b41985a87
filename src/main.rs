//! `contender` binary: parse arguments, then hand over to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: per-thread free lists and cheap frees from another thread (the
/// prediction log frees on its writer thread what request handlers
/// allocated); see BENCHMARKS.md for what it changes.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    contender::cli::run(contender::cli::Cli::parse())
}
