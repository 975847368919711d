//! End-to-end behaviour on a real control plane: children, changes, drift, status, invalid
//! specs, garbage collection and shutdown.

#[path = "../common/mod.rs"]
mod common;
mod failures;
mod helpers;
mod invalid;
mod lifecycle;
