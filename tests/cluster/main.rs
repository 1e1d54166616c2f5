//! The cluster tier: tests against one real control plane (etcd + kube-apiserver on
//! 127.0.0.1), the real kubectl and helm, the real health evaluators and the PPIO simulator,
//! with the operator run as its own process. One binary, so the control plane starts once
//! and is shared by every test (each works in namespaces of its own).

#[path = "../support/mod.rs"]
mod support;

mod chart;
mod contract;
mod e2e;
mod exports;
mod gitops;
mod hardening_leader;
mod import;
mod metrics_auth;
mod money;
mod monitoring;
mod operations;
