//! How a run starts in `RUN/` (`--out`): fresh, resumed from its latest complete checkpoint, or
//! not at all because it already finished. [`start`] is the only code that touches `RUN/` before
//! training: it refuses to write over anything that is not this run (another run, a model in
//! `final/`, files taidcache did not write) unless `--overwrite`, and tells the user what a
//! `--resume` did when it had nothing (or only part) to resume.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::checkpoint::{self, CHECKPOINTS_DIR};
use super::identity::{RunIdentity, RUN_FILE};
use super::metrics::{MetricsLine, METRICS_FILE};
use super::options::DistillOptions;
use crate::error::{Error, IoContext, Result};

/// The directory of the trained student inside a run.
pub const FINAL_DIR: &str = "final";

/// What a run writes in `RUN/` (with their temporary names); anything else there is not ours.
/// Names starting with a dot (lock files, `.DS_Store`) are ignored too.
const OWN_NAMES: [&str; 7] = [
    RUN_FILE,
    "run.json.tmp",
    METRICS_FILE,
    "metrics.jsonl.tmp",
    CHECKPOINTS_DIR,
    FINAL_DIR,
    "final.tmp",
];

/// How the run goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// From step 0 (`RUN/run.json` written, nothing of an earlier run left in `RUN/`).
    Fresh,
    /// From the complete checkpoint of `step` in `dir`.
    Resume { step: u64, dir: PathBuf },
    /// The run already finished: `final/` holds its student; nothing to do.
    Finished { steps: u64 },
}

/// What `RUN/` holds.
struct Contents {
    run_json: bool,
    metrics: bool,
    checkpoints: bool,
    final_model: bool,
    /// Entries taidcache did not write.
    foreign: Vec<String>,
}

impl Contents {
    fn read(run: &Path) -> Result<Self> {
        let mut c = Contents {
            run_json: run.join(RUN_FILE).exists(),
            metrics: run.join(METRICS_FILE).exists(),
            checkpoints: !checkpoint::list(run)?.is_empty(),
            final_model: non_empty(&run.join(FINAL_DIR))?,
            foreign: Vec::new(),
        };
        if run.is_dir() {
            for e in std::fs::read_dir(run).at(run)? {
                let name = e.at(run)?.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && !OWN_NAMES.contains(&name.as_str()) {
                    c.foreign.push(name);
                }
            }
            c.foreign.sort();
        }
        Ok(c)
    }

    /// Whether a run was started here.
    fn has_run(&self) -> bool {
        self.run_json || self.metrics || self.checkpoints
    }

    fn foreign_list(&self) -> String {
        let shown: Vec<&str> = self.foreign.iter().take(3).map(String::as_str).collect();
        let more = self.foreign.len().saturating_sub(shown.len());
        let mut s = shown.join(", ");
        if more > 0 {
            s.push_str(&format!(" and {more} more"));
        }
        s
    }
}

fn non_empty(dir: &Path) -> Result<bool> {
    if !dir.is_dir() {
        return Ok(dir.exists());
    }
    Ok(std::fs::read_dir(dir).at(dir)?.next().is_some())
}

/// Refuse `--out` before its lock is taken when what it holds already says no (another run
/// without `--resume`, a model in `final/`, other people's files): a refused directory gets no
/// lock file. [`start`] asks the same again under the lock.
pub fn check(opts: &DistillOptions) -> Result<()> {
    if opts.overwrite || !opts.out.is_dir() {
        return Ok(());
    }
    match refusal(opts, &Contents::read(&opts.out)?, &opts.out) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Why `RUN/` holding `c` cannot take the run of `opts` without `--overwrite`, if it cannot.
fn refusal(opts: &DistillOptions, c: &Contents, run: &Path) -> Option<Error> {
    if opts.overwrite {
        return None;
    }
    let shown = run.display();
    let refuse = |msg: String| Some(Error::flag("--out", msg));
    if !opts.resume {
        if c.has_run() {
            return refuse(format!(
                "{shown} already holds a run; pass --resume to continue it, --overwrite to replace it, or choose another --out"
            ));
        }
        if c.final_model {
            return refuse(format!(
                "{} already holds a model; pass --overwrite to replace it or choose another --out",
                run.join(FINAL_DIR).display()
            ));
        }
        if !c.foreign.is_empty() {
            return refuse(format!(
                "{shown} holds files that are not a taidcache run ({}); pass --overwrite to write the run beside them or choose another --out",
                c.foreign_list()
            ));
        }
        return None;
    }
    if !c.has_run() && (c.final_model || !c.foreign.is_empty()) {
        return Some(Error::flag(
            "--resume",
            format!(
                "{shown} holds no taidcache run to resume ({}); choose another --out",
                if c.final_model {
                    "only a model in final/".to_string()
                } else {
                    format!("it holds {}", c.foreign_list())
                }
            ),
        ));
    }
    None
}

/// Decide how the run of `opts` (whose identity is `identity`) starts in `--out`, say so on
/// `out` when it is not a plain fresh start, and prepare `RUN/`: create it and write
/// `run.json` for a fresh run; drop the metrics of a run that had no checkpoint to resume from.
pub fn start(opts: &DistillOptions, identity: &RunIdentity, out: &mut dyn Write) -> Result<Start> {
    let run = &opts.out;
    let shown = run.display();
    if run.exists() && !run.is_dir() {
        return Err(Error::flag(
            "--out",
            format!("{shown} is a file, not a run directory; choose another --out"),
        ));
    }
    let c = Contents::read(run)?;
    if opts.overwrite {
        let mut removed = Vec::new();
        for name in OWN_NAMES {
            let p = run.join(name);
            if p.is_dir() {
                std::fs::remove_dir_all(&p).at(&p)?;
            } else if p.exists() {
                std::fs::remove_file(&p).at(&p)?;
            } else {
                continue;
            }
            if !name.ends_with(".tmp") {
                removed.push(name);
            }
        }
        if !removed.is_empty() {
            writeln!(
                out,
                "{shown}: --overwrite: removed the earlier run's {}",
                removed.join(", ")
            )
            .at(run)?;
        }
        return fresh(run, identity);
    }
    if let Some(e) = refusal(opts, &c, run) {
        return Err(e);
    }
    if !opts.resume {
        return fresh(run, identity);
    }

    // --resume
    if !c.has_run() {
        writeln!(
            out,
            "{shown}: nothing to resume (no run was started there); starting a new run"
        )
        .at(run)?;
        return fresh(run, identity);
    }
    let run_file = run.join(RUN_FILE);
    if !c.run_json {
        return Err(Error::flag(
            "--resume",
            format!(
                "{} is missing: the run in {shown} was started by an older taidcache, so its settings cannot be checked; start it over with --overwrite or choose another --out",
                run_file.display()
            ),
        ));
    }
    let steps_flag = if opts.steps.is_some() {
        "--steps"
    } else {
        "--epochs"
    };
    identity.check_same(&RunIdentity::load(&run_file)?, &run_file, run, steps_flag)?;

    let metrics_file = run.join(METRICS_FILE);
    // Leniently: a kill may have torn the last line, which the resumed run drops anyway.
    let lines: Vec<MetricsLine> = if c.metrics {
        std::fs::read_to_string(&metrics_file)
            .at(&metrics_file)?
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    } else {
        Vec::new()
    };
    let last_step = lines.iter().filter(|l| !l.is_eval()).map(|l| l.step).max();
    if c.final_model && last_step == Some(identity.steps) {
        writeln!(
            out,
            "{shown}: the run already finished (step {} of {}); nothing to do, the student is in {}",
            identity.steps,
            identity.steps,
            run.join(FINAL_DIR).display()
        )
        .at(run)?;
        return Ok(Start::Finished {
            steps: identity.steps,
        });
    }

    let (found, skipped) = checkpoint::latest_complete(run)?;
    for (dir, why) in &skipped {
        writeln!(
            out,
            "{}: skipping this incomplete checkpoint: {why}",
            dir.display()
        )
        .at(run)?;
    }
    match found {
        Some((step, dir)) => {
            let file = dir.join(RUN_FILE);
            identity.check_same(&RunIdentity::load(&file)?, &file, run, steps_flag)?;
            Ok(Start::Resume { step, dir })
        }
        None if c.checkpoints => {
            let (dir, why) = &skipped[0];
            Err(Error::checkpoint(
                dir,
                format!(
                    "{why}, and no earlier checkpoint of {shown} is complete: nothing to resume from; start the run over with --overwrite or choose another --out"
                ),
            ))
        }
        None => {
            let n = lines.len();
            if c.metrics {
                std::fs::remove_file(&metrics_file).at(&metrics_file)?;
            }
            writeln!(
                out,
                "{shown}: no checkpoint to resume from (none was written yet; see --save-every); starting over from step 0{}",
                if n > 0 {
                    format!(", replacing the {n} lines of {METRICS_FILE}")
                } else {
                    String::new()
                }
            )
            .at(run)?;
            Ok(Start::Fresh)
        }
    }
}

/// Create `RUN/` and write its `run.json`.
fn fresh(run: &Path, identity: &RunIdentity) -> Result<Start> {
    std::fs::create_dir_all(run).at(run)?;
    identity.save(&run.join(RUN_FILE))?;
    Ok(Start::Fresh)
}
