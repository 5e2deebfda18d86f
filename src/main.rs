//! The binary: reads the configuration, sets up logging and the signal handler, runs the
//! server and turns the result into an exit code.

use std::io::Write;
use std::process::ExitCode;

use mini_lambda_rust::{config, run, Config, Error, Exit};

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--help" | "-h") => {
            print!("{}", config::help_text());
            return ExitCode::SUCCESS;
        }
        Some("--version" | "-V") => {
            println!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("error: unknown argument {other:?}; configuration comes from the environment, see --help");
            return ExitCode::from(2);
        }
    }
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("mini_lambda_rust=info"),
    )
    .init();

    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };

    // The handler only sends a message; the shutdown sequence lives in `run`.
    let (signal_sender, signals) = crossbeam_channel::unbounded();
    if let Err(err) = ctrlc::set_handler(move || {
        let _ = signal_sender.send(());
    }) {
        eprintln!("error: cannot install the signal handler: {err}");
        return ExitCode::FAILURE;
    }

    let result = run(config, signals, |addr| {
        // Scripts and tests read this line to learn the port when SERVER_ADDR uses port 0.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening on http://{addr}");
        let _ = stdout.flush();
    });
    match result {
        Ok(Exit::Graceful) => ExitCode::SUCCESS,
        Ok(Exit::Forced) => ExitCode::from(130),
        Err(err @ Error::Config { .. }) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
