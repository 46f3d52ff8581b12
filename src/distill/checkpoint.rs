//! `RUN/checkpoints/step-N/`: a Hugging Face model directory plus the optimizer moments and the
//! trainer state (schedule, TAID t, data cursor), written atomically, so a killed run resumes
//! exactly where its last checkpoint stopped.

use std::path::{Path, PathBuf};

use candle_core::DType;

use serde::{Deserialize, Serialize};

use super::loader::Cursor;
use super::optim::AdamW;
use super::schedule::TaidSchedule;
use crate::error::{Error, IoContext, Result};
use crate::model::train::Student;

/// The directory of a run's checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// The trainer state inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// The optimizer moments inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Everything a checkpoint needs besides the weights and the optimizer moments.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub step: u64,
    pub tokens: u64,
    pub schedule: TaidSchedule,
    pub cursor: Cursor,
}

/// `RUN/checkpoints/step-N` directories, sorted by N.
pub fn list(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run.join(CHECKPOINTS_DIR);
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(&dir).at(&dir)? {
        let p = e.at(&dir)?.path();
        let n = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok());
        if let (Some(n), true) = (n, p.is_dir()) {
            out.push((n, p));
        }
    }
    out.sort();
    Ok(out)
}

/// The directory of the checkpoint of `step`.
pub fn dir_of(run: &Path, step: u64) -> PathBuf {
    run.join(CHECKPOINTS_DIR).join(format!("step-{step}"))
}

/// Write `RUN/checkpoints/step-N` atomically: model files, optimizer moments, trainer state.
pub fn save(
    run: &Path,
    student: &Student,
    opt: &AdamW,
    state: &TrainerState,
    tokenizer: Option<&Path>,
) -> Result<PathBuf> {
    let dir = dir_of(run, state.step);
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).at(&tmp)?;
    student.write_hf_files(&tmp, DType::F32, tokenizer)?;
    opt.save(&tmp.join(OPTIMIZER_FILE))?;
    let state_path = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).map_err(|source| Error::Json {
        path: state_path.clone(),
        source,
    })?;
    std::fs::write(&state_path, text).at(&state_path)?;
    std::fs::File::open(&state_path)
        .and_then(|f| f.sync_all())
        .at(&state_path)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).at(&dir)?;
    }
    std::fs::rename(&tmp, &dir).at(&dir)?;
    Ok(dir)
}

/// The trainer state of the checkpoint in `dir`.
pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).at(&path)?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
}
