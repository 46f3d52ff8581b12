//! The `taidcache` binary: parse, resolve against `--config`, dispatch, report the error.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::CommandFactory;
use taidcache::cli::Cli;

fn main() -> ExitCode {
    // Before any thread or tensor exists: see `single_threaded_candle_ops`.
    taidcache::single_threaded_candle_ops();
    taidcache::keep_freed_memory();
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("error: {}", taidcache::config::one_line(&e));
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match Cli::resolve(&matches).and_then(|cli| taidcache::cli::run(cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}
