//! The local demo: a throw-away control plane, the PPIO simulator with sample instances and
//! the operator, all on 127.0.0.1, until Ctrl-C. Run it with `tools/demo.sh`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    ppio_testenv::demo::main(ppio_testenv::demo::DemoArgs::parse()).await
}
