//! The `taidcache` binary: parse, dispatch, report the error.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
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
