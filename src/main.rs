//! `contender` binary: parse arguments, then hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    contender::cli::run(contender::cli::Cli::parse())
}
