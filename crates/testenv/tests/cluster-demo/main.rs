//! The cluster tier's tests of the demo (`tools/demo.sh` runs `ppio-demo`): they start its
//! local control plane, so they need the upstream programs (`tools/build.sh`). In this crate
//! because only its tests can run the `ppio-demo` binary.

mod demo;
mod hardening_demo;
