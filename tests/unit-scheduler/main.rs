//! The unit tier's scheduler tests, in a binary of their own: each simulates long stretches of
//! tokio's paused clock for hundreds of PpioInstances and pins counts of requests over windows
//! of that clock, with the scheduler's randomness seeded, so every run is the same run
//! (docs/development.md, Tests).

#[path = "../support/mod.rs"]
mod support;

mod scheduler;

mod cost;
mod keys;
mod list_faults;
mod money;
mod newcomers;
