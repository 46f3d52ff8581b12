//! `RUN/checkpoints/step-N/`: a Hugging Face model directory plus the optimizer moments, the
//! trainer state (schedule, TAID t, data cursor) and a copy of the run's identity, written
//! atomically, so a killed run resumes exactly where its last checkpoint stopped.
//!
//! A checkpoint is complete or not used: its last file, `checkpoint.json`, lists every other
//! file with its size and xxh3, and [`latest_complete`] resumes only from a checkpoint whose
//! files all match it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::DType;

use serde::{Deserialize, Serialize};

use super::identity::RUN_FILE;
use super::loader::Cursor;
use super::optim::Optimizer;
use super::schedule::TaidSchedule;
use crate::error::{Error, IoContext, Result};
use crate::hash::xxh3_file;
use crate::model::train::Student;
use crate::model::weights::{CONFIG_FILE, SINGLE_FILE};

/// The directory of a run's checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// The trainer state inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// The optimizer moments inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The list of a checkpoint's files (size and xxh3 of each), written last.
pub const FILES_FILE: &str = "checkpoint.json";
/// The files no checkpoint can be resumed without.
pub const REQUIRED_FILES: [&str; 5] = [
    SINGLE_FILE,
    CONFIG_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    RUN_FILE,
];

/// `checkpoint.json`: file name → size and xxh3-128.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileList {
    pub files: BTreeMap<String, FileEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub bytes: u64,
    pub xxh3: String,
}

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

/// Write `RUN/checkpoints/step-N` atomically: model files, optimizer moments, trainer state, a
/// copy of `RUN/run.json` when there is one, and last `checkpoint.json`.
pub fn save(
    run: &Path,
    student: &Student,
    opt: &Optimizer,
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
    let identity = run.join(RUN_FILE);
    if identity.exists() {
        let to = tmp.join(RUN_FILE);
        let bytes = std::fs::read(&identity).at(&identity)?;
        write_synced(&to, &bytes)?;
    }
    write_file_list(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).at(&dir)?;
    }
    std::fs::rename(&tmp, &dir).at(&dir)?;
    Ok(dir)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}

/// List every file of the checkpoint directory `dir` in its `checkpoint.json`.
fn write_file_list(dir: &Path) -> Result<()> {
    let mut list = FileList::default();
    for e in std::fs::read_dir(dir).at(dir)? {
        let p = e.at(dir)?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name == FILES_FILE || !p.is_file() {
            continue;
        }
        let entry = FileEntry {
            bytes: std::fs::metadata(&p).at(&p)?.len(),
            xxh3: xxh3_file(&p)?,
        };
        list.files.insert(name.to_string(), entry);
    }
    let path = dir.join(FILES_FILE);
    let text = serde_json::to_vec_pretty(&list).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    write_synced(&path, &text)
}

/// Why the checkpoint in `dir` cannot be resumed from, if it cannot: a required file missing,
/// no `checkpoint.json` (its save never finished), or a file whose size or xxh3 differs from it.
pub fn incomplete(dir: &Path) -> Result<Option<String>> {
    for name in REQUIRED_FILES {
        if !dir.join(name).is_file() {
            return Ok(Some(format!("{name} is missing")));
        }
    }
    let path = dir.join(FILES_FILE);
    if !path.is_file() {
        return Ok(Some(format!(
            "{FILES_FILE} is missing (its save did not finish)"
        )));
    }
    let text = std::fs::read_to_string(&path).at(&path)?;
    let list: FileList = match serde_json::from_str(&text) {
        Ok(l) => l,
        Err(e) => return Ok(Some(format!("{FILES_FILE} does not parse: {e}"))),
    };
    for name in REQUIRED_FILES {
        if !list.files.contains_key(name) {
            return Ok(Some(format!("{name} is not listed in {FILES_FILE}")));
        }
    }
    for (name, entry) in &list.files {
        let p = dir.join(name);
        let bytes = match std::fs::metadata(&p) {
            Ok(m) => m.len(),
            Err(_) => return Ok(Some(format!("{name} is missing"))),
        };
        if bytes != entry.bytes {
            return Ok(Some(format!(
                "{name} has {bytes} bytes, {FILES_FILE} lists {}",
                entry.bytes
            )));
        }
        if xxh3_file(&p)? != entry.xxh3 {
            return Ok(Some(format!(
                "{name} does not match its xxh3 in {FILES_FILE}"
            )));
        }
    }
    Ok(None)
}

/// The latest complete checkpoint of `run` (step and directory), and the later ones skipped
/// with why (newest first).
#[allow(clippy::type_complexity)]
pub fn latest_complete(run: &Path) -> Result<(Option<(u64, PathBuf)>, Vec<(PathBuf, String)>)> {
    let mut skipped = Vec::new();
    for (n, dir) in list(run)?.into_iter().rev() {
        match incomplete(&dir)? {
            None => return Ok((Some((n, dir)), skipped)),
            Some(why) => skipped.push((dir, why)),
        }
    }
    Ok((None, skipped))
}

/// The trainer state of the checkpoint in `dir`.
pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).at(&path)?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
}
