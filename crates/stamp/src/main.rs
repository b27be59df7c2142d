//! The `stamp` command: argument parsing, progress and output. All logic lives in the libraries.

mod cli;
mod commands;
mod dirs;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    // A registered app's command is a link to this binary: run the app.
    if let Some(code) = commands::dispatch_argv0() {
        return ExitCode::from(code);
    }
    let cli = cli::Cli::parse();
    let service = match &cli.command {
        cli::Command::Serve(_) => true,
        cli::Command::Start(a) => a.foreground,
        _ => false,
    };
    output::init_logging(cli.verbose, service);
    let monitor = matches!(&cli.command, cli::Command::Start(a) if a.foreground);
    let cancel = progress::install_ctrlc(monitor);
    let error_code = cli.command.error_exit_code();
    match commands::run(cli.command, &cancel) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            output::print_error(&err);
            ExitCode::from(output::exit_code_for(&err, error_code))
        }
    }
}

/// Writing to a closed pipe (`stamp ps | head -1`) ends the program quietly with status 141,
/// as a C program killed by SIGPIPE would, instead of a panic message from `println!`.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
