//! The binary: reads the configuration, sets up logging and the signal handler, runs the
//! server and turns the result into an exit code.

use std::io::Write;
use std::process::ExitCode;

use mini_lambda_rust::config::LogFormat;
use mini_lambda_rust::{config, log_line, run, Config, Error, Exit};

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
    // The configuration first: it says how to log (LOG_FORMAT), and reading it logs nothing.
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);

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
        // The store opens the file DATABASE_URL names; a file that cannot be one is a
        // configuration error like any other, not a failure worth restarting for.
        Err(err @ Error::DatabaseUnusable(_)) => {
            eprintln!("error: DATABASE_URL: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter when `RUST_LOG` is unset, and the fallback when it cannot be used.
const DEFAULT_LOG_FILTER: &str = "mini_lambda_rust=info";

/// Logs to stderr in `format` with `RUST_LOG`'s filter, or the default one (and a warning
/// saying why) when `RUST_LOG` would hide every line of this server.
fn init_logging(format: LogFormat) {
    let (filter, warning) = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&filter);
    log_line::configure(&mut builder, format);
    if let Ok(style) = std::env::var("RUST_LOG_STYLE") {
        builder.parse_write_style(&style);
    }
    builder.init();
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
}

/// The filter to log with for `RUST_LOG` = `requested`, and a warning if that is not what was
/// asked. env_logger skips a directive it cannot parse and keeps only error lines when none is
/// left, and it reads a word that is not a level (`verbose`, `warning`) as a module name,
/// which hides every line of this server; both are reported instead of silently obeyed.
fn log_filter(requested: Option<&str>) -> (String, Option<String>) {
    let Some(spec) = requested.map(str::trim).filter(|spec| !spec.is_empty()) else {
        return (DEFAULT_LOG_FILTER.to_string(), None);
    };
    if let Err(err) = env_filter::Builder::new().try_parse(spec) {
        let warning = format!(
            "RUST_LOG={spec:?} is not a valid log filter ({err}); logging with the default \
             {DEFAULT_LOG_FILTER} instead. A filter is a comma-separated list of LEVEL or \
             MODULE=LEVEL, LEVEL being off, error, warn, info, debug or trace"
        );
        return (DEFAULT_LOG_FILTER.to_string(), Some(warning));
    }
    if !covers_this_crate(spec) {
        let filter = format!("{DEFAULT_LOG_FILTER},{spec}");
        let warning = format!(
            "RUST_LOG={spec:?} sets no level for {crate_name}, the module of this server's \
             log lines, so it would hide all of them (a word that is not a level is read as a \
             module name); logging with {filter:?} instead. Levels are off, error, warn, \
             info, debug and trace",
            crate_name = env!("CARGO_CRATE_NAME")
        );
        return (filter, Some(warning));
    }
    (spec.to_string(), None)
}

/// Whether a directive of the (valid) filter `spec` applies to this crate's log lines: a bare
/// level, or a module name that is a prefix of the crate's targets or one of its modules.
/// env_filter matches a directive's name as a prefix of the target.
fn covers_this_crate(spec: &str) -> bool {
    let crate_name = env!("CARGO_CRATE_NAME");
    let modules = spec.split('/').next().unwrap_or_default();
    modules
        .split(',')
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
        .any(|directive| {
            let name = match directive.split_once('=') {
                Some((name, _)) => name.trim(),
                None if directive.parse::<log::LevelFilter>().is_ok() => return true,
                None => directive,
            };
            crate_name.starts_with(name) || name.starts_with(&format!("{crate_name}::"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_for(spec: &str) -> (String, bool) {
        let (filter, warning) = log_filter(Some(spec));
        (filter, warning.is_some())
    }

    #[test]
    fn a_usable_rust_log_is_taken_as_written() {
        for spec in [
            "debug",
            "WARN",
            "off",
            "mini_lambda_rust=debug",
            "mini_lambda_rust::worker=trace,tiny_http=info",
            "mini_lambda_rust=off",
            "info,rusqlite=warn",
            "mini=debug",
            "mini_lambda_rust=info/job",
        ] {
            assert_eq!(filter_for(spec), (spec.to_string(), false), "{spec}");
        }
        assert_eq!(log_filter(None), (DEFAULT_LOG_FILTER.to_string(), None));
        assert_eq!(
            log_filter(Some("  ")),
            (DEFAULT_LOG_FILTER.to_string(), None)
        );
    }

    #[test]
    fn an_unparsable_rust_log_falls_back_to_the_default_with_a_warning() {
        for spec in [
            "mini_lambda_rust=loud",
            "debug=info=trace",
            "info/a/b",
            "mini_lambda_rust=info/(",
        ] {
            assert_eq!(
                filter_for(spec),
                (DEFAULT_LOG_FILTER.to_string(), true),
                "{spec}"
            );
        }
        let (_, warning) = log_filter(Some("mini_lambda_rust=loud"));
        let warning = warning.unwrap();
        assert!(
            warning.starts_with("RUST_LOG=\"mini_lambda_rust=loud\" is not a valid log filter")
                && warning.contains("'loud'"),
            "{warning}"
        );
    }

    #[test]
    fn a_rust_log_that_hides_this_server_gets_the_default_added() {
        for spec in [
            "verbose",
            "warning",
            "tiny_http=debug",
            "mini-lambda-rust=debug",
        ] {
            assert_eq!(
                filter_for(spec),
                (format!("{DEFAULT_LOG_FILTER},{spec}"), true),
                "{spec}"
            );
        }
    }
}
