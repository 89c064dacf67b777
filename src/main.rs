//! The credvend binary: parse flags, set up logging, run a command.

use std::process::ExitCode;

use clap::Parser;

use credvend::cli::{Cli, Command};
use credvend::{check, exec, generate, run};

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
        Command::Exec(args) => exec::exec(args),
        Command::Check(args) => check::check(args),
        Command::Completions(args) => generate::completions(args.shell),
        Command::Man(args) => generate::man(args.command.as_deref()),
    };
    ExitCode::from(code)
}
