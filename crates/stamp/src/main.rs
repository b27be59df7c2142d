//! The `stamp` command: argument parsing, progress and output. All logic lives in the libraries.

mod cli;
mod commands;
mod dirs;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let service = match &cli.command {
        cli::Command::Serve(_) => true,
        cli::Command::Start(a) => a.foreground,
        _ => false,
    };
    output::init_logging(cli.verbose, service);
    let cancel = progress::install_ctrlc();
    let error_code = cli.command.error_exit_code();
    match commands::run(cli.command, &cancel) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            output::print_error(&err);
            ExitCode::from(output::exit_code_for(&err, error_code))
        }
    }
}
