//! `RUN/metrics.jsonl`: one [`MetricsLine`] per optimizer step, plus one per evaluation. The
//! trainer writes them, `plot` and the demo read them back, all through this type.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::objectives::Objective;
use crate::error::{Error, IoContext, Result};

/// Name of the metrics file inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Which kind of line: absent on training lines, `"eval"` on evaluation lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Eval,
}

/// One line of `metrics.jsonl`. Training lines carry the step's loss, t, learning rate, tokens so
/// far, gradient norm, cross-entropy on the labels and wall time; evaluation lines the held-out
/// cross-entropy and KL from the teacher. Fields a line does not carry are absent (a non-finite
/// value is written as `null` and read back as absent).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    pub step: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<Objective>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<f64>,
    /// TAID's linear lower bound `t_lin` at this step (training lines of TAID runs): where t
    /// sits above it, the adaptive term of Algorithm 1 moved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_floor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_ce: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
    /// Held-out next-token cross-entropy (evaluation lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce: Option<f64>,
    /// Held-out KL(teacher ‖ student) on the cached top-k (evaluation lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_teacher: Option<f64>,
    /// Held-out expected calibration error of the student's top-1 probability, 15 bins
    /// (evaluation lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece: Option<f64>,
    /// Held-out share of positions where the student's top-1 token is the teacher's
    /// (evaluation lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
}

impl MetricsLine {
    /// An evaluation line at `step` (t is the schedule's value there).
    pub fn eval(step: u64, ce: f64, kl_teacher: f64, t: f64) -> Self {
        Self {
            step,
            split: Some(Split::Eval),
            ce: Some(ce),
            kl_teacher: Some(kl_teacher),
            t: Some(t),
            ..Self::default()
        }
    }

    pub fn is_eval(&self) -> bool {
        self.split == Some(Split::Eval)
    }
}

/// Append one line to `file` and flush it.
pub fn append(file: &Path, line: &MetricsLine) -> Result<()> {
    let text = serde_json::to_string(line).map_err(|source| Error::Json {
        path: file.to_path_buf(),
        source,
    })?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .at(file)?;
    writeln!(f, "{text}").at(file)?;
    f.flush().at(file)
}

/// Every line of `file`; an unreadable line is an error naming its number.
pub fn read(file: &Path) -> Result<Vec<MetricsLine>> {
    let text = std::fs::read_to_string(file).at(file)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::field(file, format!("line {}", i + 1), e.to_string()))
        })
        .collect()
}

/// Keep the lines of steps ≤ `step` (a resumed run rewrites what came after); lines that do not
/// parse are dropped with them.
pub fn truncate_after(file: &Path, step: u64) -> Result<()> {
    if !file.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(file).at(file)?;
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<MetricsLine>(l).is_ok_and(|m| m.step <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    let tmp = file.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept).at(&tmp)?;
    std::fs::rename(&tmp, file).at(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_truncation_keeps_steps_up_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(METRICS_FILE);
        for step in 1..=4 {
            let train = MetricsLine {
                step,
                objective: Some(Objective::Taid),
                loss: Some(2.0 / step as f64),
                t: Some(0.4),
                tokens: Some(100 * step),
                grad_norm: Some(f64::NAN),
                ..MetricsLine::default()
            };
            append(&file, &train).unwrap();
        }
        append(&file, &MetricsLine::eval(4, 3.5, 0.25, 0.4)).unwrap();
        let lines = read(&file).unwrap();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[1].loss, Some(1.0));
        assert_eq!(
            lines[1].grad_norm, None,
            "NaN is written as null, read as absent"
        );
        assert!(lines[4].is_eval() && !lines[3].is_eval());
        assert_eq!((lines[4].ce, lines[4].kl_teacher), (Some(3.5), Some(0.25)));
        truncate_after(&file, 2).unwrap();
        let steps: Vec<u64> = read(&file).unwrap().iter().map(|l| l.step).collect();
        assert_eq!(steps, [1, 2]);
    }
}
