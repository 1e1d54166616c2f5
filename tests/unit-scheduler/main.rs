//! The unit tier's scheduler tests, in a binary of their own: each simulates long stretches of
//! tokio's paused clock for hundreds of PpioInstances and pins counts of requests over windows
//! of that clock. Beside the rest of the unit tier their counts came out a few percent off more
//! often (docs/development.md, Tests); apart, they run as they always did.

#[path = "../support/mod.rs"]
mod support;

mod scheduler;
