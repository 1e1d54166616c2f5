#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    ppio_operator::cli::main(ppio_operator::cli::Cli::parse()).await
}
