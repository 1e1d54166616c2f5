#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// jemalloc gives memory freed after a burst (a bulk apply, a relist, an hour's bill writes)
/// back to the system within seconds, by its background thread also in an arena whose
/// threads went quiet after the burst; glibc's malloc keeps the peak resident.
/// (`--no-default-features` leaves it out, for memory profilers that hook malloc.)
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    ppio_operator::cli::main(ppio_operator::cli::Cli::parse()).await
}
