//! credvend: vends AWS temporary credentials to the programs next to it.
//!
//! Data flows one way: [`sts`] fetches, [`refresh`] decides when and
//! publishes into [`state`], and the handlers ([`container`], [`imds`],
//! [`admin`]) only read. [`app`] wires them; [`run`] is the process
//! lifecycle.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod check;
pub mod cli;
pub mod config;
pub mod container;
pub mod creds;
pub mod exec;
pub mod generate;
pub mod imds;
pub mod metrics;
pub mod refresh;
pub mod reqstats;
pub mod run;
pub mod server;
pub mod signal;
pub mod state;
pub mod sts;
pub mod timing;
