//! The `taidcache` binary: parse, dispatch, report the error.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any thread or tensor exists: see `single_threaded_candle_ops`.
    taidcache::single_threaded_candle_ops();
    taidcache::keep_freed_memory();
    let cli = taidcache::cli::Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match taidcache::cli::run(cli, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
