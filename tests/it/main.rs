//! Integration tests: one binary (house style), one module per concern.
//! They drive the real credvend binary (or the real `App`) over real
//! sockets, with moto and real SDK clients. Run them with scripts/test.

mod common;

mod abuse;
mod check;
mod e2e;
mod exec;
mod faults;
mod imds;
mod leak;
mod lifecycle;
mod metrics;
mod renewal;
mod review;
mod roles;
mod startup;
mod wire;
