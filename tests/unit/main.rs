//! The unit tier: tests that need no external program. The operator's pieces against the
//! fake PPIO and the mocked Kubernetes API (paused time), the CRD, the status, the simulator,
//! and the operator binary's command line. One binary, so it links once.

#[path = "../support/mod.rs"]
mod support;

mod crd;
mod docs;
mod fuzz_corpus;
mod layout;
mod reconcile;
mod release;
mod serving;
mod simulator;
mod simulator_money;
mod startup;
mod status;
mod test_command;
