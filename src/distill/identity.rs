//! The identity of a run: everything that decides its trajectory, so that `--resume` continues
//! the same run and nothing else. Written to `RUN/run.json` when the run starts and copied into
//! every checkpoint; [`RunIdentity::check_same`] names the first flag that differs.
//!
//! What is in it, and why:
//!
//! - the cache (`--cache`) and the evaluation cache (`--eval-cache`) by content: a sha256 of
//!   their `manifest.json` without the fields that may legitimately change when a cache is moved
//!   or re-merged by another build (`taidcache_version`, `teacher.source`, `corpus.files[].path`).
//!   The manifest holds the teacher, tokenizer, corpus, packing, top-k, encoding and the xxh3 of
//!   every shard, so the same hash means the same rows. Their paths are kept, informational only.
//! - the student (`--student`) by content: sha256 over the size and xxh3 of its `config.json`,
//!   `tokenizer.json` and safetensors files (a random init is pinned by `--seed`).
//! - the number of optimizer steps, however given (`--steps`, or `--epochs` resolved against the
//!   cache): the cosine learning rate and TAID's linear floor both depend on it, so a run cannot
//!   be extended or shortened and still be the run it was.
//! - every other option that changes the weights or what `metrics.jsonl` holds: [`Trajectory`].
//!
//! Not in it: `--out` and `--config` (where, not what), `--resume` and `--overwrite` (how to
//! start), `--eval-cache-any-teacher` (a permission; the eval cache enters by content),
//! `--save-every` (when checkpoints are written, never what they hold), `--save-dtype`
//! (how `final/` is written; checkpoints are always f32), `--device` (the machine, not the run:
//! a run may move to another machine, where it matches the uninterrupted run up to floating
//! point summation order rather than byte for byte), `--recompute` (how the backward gets the
//! same gradients: the same ops, run again) and the progress bar.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::objectives::Objective;
use super::options::{AdaptiveSignal, DistillOptions, Precision};
use super::targets::TailMode;
use crate::cache::manifest::Manifest;
use crate::error::{Error, IoContext, Result};
use crate::hash::{sha256_hex, xxh3_file};
use crate::model::weights::{self, CONFIG_FILE, INDEX_FILE, SINGLE_FILE, TOKENIZER_FILE};

/// The run identity's file, in `RUN/` and in every checkpoint.
pub const RUN_FILE: &str = "run.json";

/// What a run is: see the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunIdentity {
    /// The taidcache version that started the run (informational, not compared).
    pub taidcache_version: String,
    pub cache: Source,
    pub student: Source,
    pub eval_cache: Option<Source>,
    /// Optimizer steps of the whole run.
    pub steps: u64,
    pub flags: Trajectory,
}

/// An input directory: where it was (informational) and what it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub path: String,
    pub sha256: String,
}

/// The options of [`DistillOptions`] that change the trajectory, as given. Each key is the
/// option's flag without `--` (underscores for dashes); a new option goes here unless the
/// module documentation says why not (a unit test keeps the two lists in step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trajectory {
    pub objective: Objective,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub t_start: f64,
    pub t_end: f64,
    pub alpha: f64,
    pub beta: f64,
    pub adaptive_signal: AdaptiveSignal,
    pub tail: TailMode,
    pub lambda: f32,
    pub ce_weight: f32,
    pub seed: u64,
    /// The steps of the eval lines of `metrics.jsonl`.
    pub eval_every: u64,
    /// Which rows are trained on and which are held out.
    pub eval_fraction: f64,
    /// The output projection's products (absent from runs made before the flag: f32).
    #[serde(default)]
    pub precision: Precision,
}

impl Trajectory {
    pub fn of(o: &DistillOptions) -> Self {
        Self {
            objective: o.objective,
            batch_size: o.batch_size,
            grad_accum: o.grad_accum,
            lr: o.lr,
            warmup: o.warmup,
            weight_decay: o.weight_decay,
            max_grad_norm: o.max_grad_norm,
            t_start: o.t_start,
            t_end: o.t_end,
            alpha: o.alpha,
            beta: o.beta,
            adaptive_signal: o.adaptive_signal,
            tail: o.tail,
            lambda: o.lambda,
            ce_weight: o.ce_weight,
            seed: o.seed,
            eval_every: o.eval_every,
            eval_fraction: o.eval_fraction,
            precision: o.precision,
        }
    }
}

impl RunIdentity {
    /// The identity of a run of `opts` on `cache` (and `eval_cache`) for `steps` optimizer
    /// steps; reads the student's files once to hash them.
    pub fn new(
        opts: &DistillOptions,
        cache: &Manifest,
        eval_cache: Option<&Manifest>,
        steps: u64,
    ) -> Result<Self> {
        let source = |dir: &Path, sha256: String| Source {
            path: dir.display().to_string(),
            sha256,
        };
        Ok(Self {
            taidcache_version: env!("CARGO_PKG_VERSION").to_string(),
            cache: source(&opts.cache, cache_sha256(cache)?),
            student: source(&opts.student, student_sha256(&opts.student)?),
            eval_cache: match (&opts.eval_cache, eval_cache) {
                (Some(dir), Some(m)) => Some(source(dir, cache_sha256(m)?)),
                _ => None,
            },
            steps,
            flags: Trajectory::of(opts),
        })
    }

    /// Refuse to continue `started` (read from `file`, of the run in `run`) as this run,
    /// naming the first input or flag that differs. `steps_flag` is how the step count was
    /// given (`--steps` or `--epochs`).
    pub fn check_same(
        &self,
        started: &RunIdentity,
        file: &Path,
        run: &Path,
        steps_flag: &str,
    ) -> Result<()> {
        let run = run.display();
        let advice = "resume with the same flags or choose another --out";
        let refuse = |flag: &str, now: String, then: String| {
            Err(Error::flag(
                flag,
                format!(
                    "{now} but the run in {run} was started with {then} ({}); {advice}",
                    file.display()
                ),
            ))
        };
        let content = |what: &str, now: &Source, then: &Source| {
            format!(
                "{} holds another {what} (sha256 {}…) than the one the run in {run} was started with: {} (sha256 {}…) ({}); {advice}",
                now.path,
                short(&now.sha256),
                then.path,
                short(&then.sha256),
                file.display()
            )
        };
        if self.cache.sha256 != started.cache.sha256 {
            return Err(Error::flag(
                "--cache",
                content("cache", &self.cache, &started.cache),
            ));
        }
        if self.student.sha256 != started.student.sha256 {
            return Err(Error::flag(
                "--student",
                content("student", &self.student, &started.student),
            ));
        }
        match (&self.eval_cache, &started.eval_cache) {
            (Some(a), Some(b)) if a.sha256 != b.sha256 => {
                return Err(Error::flag("--eval-cache", content("cache", a, b)))
            }
            (Some(a), None) => {
                return refuse("--eval-cache", format!("is {}", a.path), "none".into())
            }
            (None, Some(b)) => {
                return refuse("--eval-cache", "is not given".into(), b.path.clone())
            }
            _ => {}
        }
        if self.steps != started.steps {
            let now = if steps_flag == "--steps" {
                format!("is {}", self.steps)
            } else {
                format!("gives {} steps", self.steps)
            };
            return refuse(steps_flag, now, format!("{} steps", started.steps));
        }
        // Compare the flags as their JSON text: both sides went through the same printing.
        let (now, then) = (as_json(&self.flags)?, as_json(&started.flags)?);
        for (key, a) in &now {
            let b = then.get(key).unwrap_or(&Value::Null);
            if a != b {
                return refuse(
                    &format!("--{}", key.replace('_', "-")),
                    format!("is {}", plain(a)),
                    plain(b),
                );
            }
        }
        Ok(())
    }

    /// Read `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The file's bytes: pretty JSON and a newline.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut b = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Internal(format!("run identity: {e}")))?;
        b.push(b'\n');
        Ok(b)
    }

    /// Write `path` atomically (`PATH.tmp`, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp).at(&tmp)?;
            f.write_all(&self.to_bytes()?).at(&tmp)?;
            f.sync_all().at(&tmp)?;
        }
        std::fs::rename(&tmp, path).at(path)
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn as_json(t: &Trajectory) -> Result<serde_json::Map<String, Value>> {
    let text = serde_json::to_string(t).map_err(|e| Error::Internal(format!("flags: {e}")))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Error::Internal("flags do not serialize as a map".into())),
    }
}

/// A value as the user would write it on the command line.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// sha256 of a cache's manifest without its informational fields (see the module doc).
pub fn cache_sha256(manifest: &Manifest) -> Result<String> {
    let mut v = serde_json::to_value(manifest)
        .map_err(|e| Error::Internal(format!("manifest identity: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("taidcache_version");
    }
    if let Some(o) = v.get_mut("teacher").and_then(Value::as_object_mut) {
        o.remove("source");
    }
    if let Some(files) = v.pointer_mut("/corpus/files").and_then(Value::as_array_mut) {
        for f in files.iter_mut().filter_map(Value::as_object_mut) {
            f.remove("path");
        }
    }
    let bytes =
        serde_json::to_vec(&v).map_err(|e| Error::Internal(format!("manifest identity: {e}")))?;
    Ok(sha256_hex(&bytes))
}

/// sha256 over the name, size and xxh3 of every file a student is made from: `config.json`,
/// `tokenizer.json` when present, and its safetensors (with their index) when it has weights.
pub fn student_sha256(dir: &Path) -> Result<String> {
    let mut files = vec![dir.join(CONFIG_FILE)];
    let tokenizer = dir.join(TOKENIZER_FILE);
    if tokenizer.exists() {
        files.push(tokenizer);
    }
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        files.push(index.clone());
    }
    if index.exists() || dir.join(SINGLE_FILE).exists() {
        files.extend(weights::safetensors_files(dir)?);
    }
    let mut lines = String::new();
    for f in &files {
        let bytes = std::fs::metadata(f).at(f)?.len();
        let name = f.strip_prefix(dir).unwrap_or(f).display();
        lines.push_str(&format!("{name}\t{bytes}\t{}\n", xxh3_file(f)?));
    }
    Ok(sha256_hex(lines.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_is_in_the_trajectory_or_documented_as_not() {
        // The options the module documentation says leave the trajectory alone, or enter the
        // identity another way (by content, or resolved into `steps`).
        const NOT_FLAGS: [&str; 13] = [
            "cache",
            "student",
            "eval_cache",
            "out",
            "steps",
            "epochs",
            "resume",
            "overwrite",
            "eval_cache_any_teacher",
            "save_every",
            "save_dtype",
            "device",
            "recompute",
        ];
        let opts = serde_json::to_value(DistillOptions::default()).unwrap();
        let flags = as_json(&Trajectory::of(&DistillOptions::default())).unwrap();
        let mut unclassified: Vec<&String> = opts
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !flags.contains_key(*k) && !NOT_FLAGS.contains(&k.as_str()))
            .collect();
        unclassified.sort();
        assert!(
            unclassified.is_empty(),
            "options neither in Trajectory nor documented as outside it: {unclassified:?}"
        );
        for k in flags.keys() {
            assert!(
                opts.get(k).is_some(),
                "Trajectory key `{k}` is not an option"
            );
        }
    }

    #[test]
    fn cache_identity_ignores_moved_paths_and_version_but_not_content() {
        let m = crate::cache::testutil::sample_manifest(2, 4);
        let base = cache_sha256(&m).unwrap();
        let mut moved = m.clone();
        moved.teacher.source = "/elsewhere/teacher".into();
        moved.taidcache_version = "9.9.9".into();
        for f in &mut moved.corpus.files {
            f.path = format!("/mnt/{}", f.path);
        }
        assert_eq!(cache_sha256(&moved).unwrap(), base);
        let mut other = m.clone();
        other.top_k += 1;
        assert_ne!(cache_sha256(&other).unwrap(), base);
        let mut other = m.clone();
        other.shards[1].xxh3 = "0".repeat(32);
        assert_ne!(cache_sha256(&other).unwrap(), base);
    }
}
