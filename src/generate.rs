//! `credvend completions SHELL` and `credvend man`: shell completions and
//! the man page, generated from the same clap definitions as the flags, so
//! they cannot drift from them. Writes to stdout only.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::run::{EXIT_CONFIG, EXIT_FAILURE};

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> u8 {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "credvend", &mut out);
    finish(out.flush())
}

/// Prints the man page (roff) of credvend, or of one command as
/// `credvend-COMMAND(1)`.
pub fn man(command: Option<&str>) -> u8 {
    let root = Cli::command();
    let page = match command {
        None => clap_mangen::Man::new(root),
        Some(name) => {
            let Some(sub) = root.find_subcommand(name) else {
                let names: Vec<&str> = root.get_subcommands().map(|s| s.get_name()).collect();
                eprintln!(
                    "credvend: no command `{name}`; commands: {}",
                    names.join(", ")
                );
                return EXIT_CONFIG;
            };
            clap_mangen::Man::new(sub.clone().name(format!("credvend-{name}")))
        }
    };
    let mut out = std::io::stdout().lock();
    finish(page.render(&mut out).and_then(|_| out.flush()))
}

fn finish(result: std::io::Result<()>) -> u8 {
    match result {
        Ok(()) => 0,
        // A closed pipe (`credvend man | head`) is not worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("credvend: cannot write: {e}");
            EXIT_FAILURE
        }
    }
}
