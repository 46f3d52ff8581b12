//! The `taidcache` binary: parse, resolve against `--config`, dispatch, report the error.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::CommandFactory;
use taidcache::cli::Cli;

fn main() -> ExitCode {
    // Before any thread or tensor exists: see `single_threaded_candle_ops`.
    taidcache::single_threaded_candle_ops();
    taidcache::keep_freed_memory();
    taidcache::report_uncaught_panics_only();
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
    let mut stdout = Stdout {
        inner: std::io::stdout().lock(),
        closed: false,
    };
    match Cli::resolve(&matches).and_then(|cli| taidcache::cli::run(cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        // `taidcache inspect --json | head`: the reader had enough; not an error.
        Err(_) if stdout.closed => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}

/// Standard output that remembers whether its reader went away (`EPIPE`), so that the error
/// the write raises is not reported as the command's failure.
struct Stdout<W> {
    inner: W,
    closed: bool,
}

impl<W: std::io::Write> std::io::Write for Stdout<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.note(r)
    }
}

impl<W> Stdout<W> {
    fn note<T>(&mut self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r {
            self.closed |= e.kind() == std::io::ErrorKind::BrokenPipe;
        }
        r
    }
}
