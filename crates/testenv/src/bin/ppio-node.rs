//! The test node by hand (see `ppio_testenv::node`): `ppio-node up` brings a real
//! single-node Kubernetes up on this machine (root), prints how to use it and runs until
//! Ctrl-C, then tears it down and lists anything left; `ppio-node down` cleans up after a node
//! that was interrupted before its teardown:
//! `cargo run -p ppio-testenv --bin ppio-node -- up --image target/image/ppio-operator.oci.tar`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ppio_testenv::node::{Node, NodeOptions, STATE_DIR};

#[derive(Debug, Parser)]
#[command(
    name = "ppio-node",
    about = "A real single-node Kubernetes for tests, by hand"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Bring the node up, run until Ctrl-C, tear it down.
    Up {
        /// An image archive to import (OCI layout in a tar; repeatable).
        #[arg(long = "image")]
        images: Vec<PathBuf>,
        /// Where the logs go (kept after the teardown).
        #[arg(long, default_value = "/tmp/ppio-node-logs")]
        logs: PathBuf,
    },
    /// Tear down a node that was interrupted before its own teardown.
    Down,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Args::parse().command {
        Cmd::Up { images, logs } => up(images, logs).await,
        Cmd::Down => down(),
    }
}

async fn up(images: Vec<PathBuf>, logs: PathBuf) -> ExitCode {
    let options = NodeOptions {
        tools: ppio_testenv::tools_dir(),
        images,
        logs,
    };
    let node = match Node::up(&options).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("ppio-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "node {} ({}) is up in {:.1?}; logs in {}\n\n  export KUBECONFIG={}\n  {} get nodes -o wide\n\nCtrl-C tears it down.",
        node.name,
        node.ip,
        node.took,
        node.logs.display(),
        node.kubeconfig.display(),
        node.tools.join("kubectl").display(),
    );
    ppio_operator::signal::shutdown_signal().await;
    println!("resident memory: {} MiB", node.resident_memory() >> 20);
    let teardown = node.down();
    println!("torn down in {:.1?}", teardown.took);
    if teardown.leftovers.is_empty() {
        println!("nothing left on the machine");
        ExitCode::SUCCESS
    } else {
        eprintln!("left on the machine: {:#?}", teardown.leftovers);
        ExitCode::FAILURE
    }
}

fn down() -> ExitCode {
    let script = std::path::Path::new(STATE_DIR).join("teardown.sh");
    if !script.exists() {
        println!("no interrupted node ({} is absent)", script.display());
        return ExitCode::SUCCESS;
    }
    // Under the node's lock: never under a running node, nor during its watchdog's teardown.
    match std::process::Command::new("flock")
        .args(["-w", "60", ppio_testenv::node::LOCK_FILE, "sh"])
        .arg(&script)
        .status()
    {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("ppio-node: the teardown script failed ({s})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ppio-node: {e}");
            ExitCode::FAILURE
        }
    }
}
