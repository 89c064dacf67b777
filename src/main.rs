//! The credvend binary: parse flags, set up logging, run a command.

use std::process::ExitCode;

use clap::Parser;

use credvend::cli::{Cli, Command};
use credvend::run;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(run::EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let code = match cli.command {
        Command::Serve(args) => run::serve(args),
        Command::Env(args) => run::env(args),
    };
    ExitCode::from(code)
}
