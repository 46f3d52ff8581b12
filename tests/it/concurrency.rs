//! Output directories are locked (issue #19, item 9): a second process on a cache or run
//! directory another process writes is refused naming the directory and the holder's pid, and
//! the first one's result is left intact; readers ignore the lock files.

use std::path::{Path, PathBuf};

use crate::common::*;
use taidcache::distill::{self, DistillOptions, RUN_LOCK_FILE};
use taidcache::lock::{Access, DirLock};
use taidcache::model::Architecture;
use taidcache::precompute::{self, PrecomputeOptions};

fn precompute_options(fx: &Fixture, out: &Path, top_k: usize) -> PrecomputeOptions {
    let mut o = PrecomputeOptions::new(&fx.teacher, vec![fx.corpus.clone()], out);
    o.top_k = top_k;
    o.seq_len = 16;
    o.batch_size = 4;
    o.shard_rows = 4;
    o.progress = false;
    o
}

fn in_use_message(dir: &Path, what: &str) -> String {
    format!(
        "--out: {} is in use by process {} ({what}); wait for it to finish or choose another --out",
        dir.display(),
        std::process::id()
    )
}

#[test]
fn precompute_into_a_cache_another_process_writes_is_refused_and_the_cache_is_intact() {
    let fx = Fixture::new(Architecture::Llama, 12);
    let cache = fx.path("cache");
    precompute::run(&precompute_options(&fx, &cache, 8), &mut Vec::new()).unwrap();
    let before = snapshot(&cache);

    // Another precompute holds the cache (as a single process): a run of another k is refused,
    // in process and from a second process, and so is any worker.
    let holder = DirLock::acquire(
        &cache,
        ".lock",
        Access::Exclusive,
        "taidcache precompute",
        "--out",
    )
    .unwrap();
    let after_lock = snapshot(&cache);
    let err = precompute::run(&precompute_options(&fx, &cache, 4), &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert_eq!(err, in_use_message(&cache, "taidcache precompute"));
    let mut worker = precompute_options(&fx, &cache, 8);
    (worker.worker, worker.workers) = (1, 2);
    let err = precompute::run(&worker, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert_eq!(err, in_use_message(&cache, "taidcache precompute"));
    let out = taidcache(&[
        "precompute",
        "--teacher",
        fx.teacher.to_str().unwrap(),
        "--corpus",
        fx.corpus.to_str().unwrap(),
        "--out",
        cache.to_str().unwrap(),
        "--top-k",
        "4",
        "--seq-len",
        "16",
        "--shard-rows",
        "4",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&in_use_message(&cache, "taidcache precompute")),
        "{stderr}"
    );
    // Nothing but the lock file's pid line changed; the lock file is not a cache entry
    // anybody reads: verify and inspect accept the cache.
    assert_eq!(snapshot(&cache), after_lock);
    drop(holder);
    let strip = |s: Vec<(PathBuf, Vec<u8>)>| -> Vec<(PathBuf, Vec<u8>)> {
        s.into_iter()
            .filter(|(p, _)| p != Path::new(".lock"))
            .collect()
    };
    assert_eq!(strip(snapshot(&cache)), strip(before));
    for cmd in ["verify", "inspect"] {
        let out = taidcache(&[cmd, cache.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn workers_of_another_count_or_the_same_worker_twice_are_refused() {
    let fx = Fixture::new(Architecture::Llama, 12);
    let cache = fx.path("cache");
    // Worker 0 of 2 is running.
    let holder = taidcache::cache::lock::lock_for_writing(&cache, 0, 2).unwrap();
    let what = "taidcache precompute --worker 0 --workers 2";
    let mut same = precompute_options(&fx, &cache, 8);
    (same.worker, same.workers) = (0, 2);
    let err = precompute::run(&same, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert_eq!(err, in_use_message(&cache, what));
    let mut other = precompute_options(&fx, &cache, 8);
    (other.worker, other.workers) = (1, 3);
    let err = precompute::run(&other, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "is in use by process {} ({what})",
            std::process::id()
        )) && err.contains("--workers 2, not 3"),
        "{err}"
    );
    let single = precompute_options(&fx, &cache, 8);
    let err = precompute::run(&single, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert_eq!(err, in_use_message(&cache, what));
    assert!(!cache.join("manifest.json").exists());
    assert!(!cache.join("manifests").exists());

    // Worker 1 of 2 runs beside it; worker 0 after it, and its merge completes the cache.
    let mut w1 = precompute_options(&fx, &cache, 8);
    (w1.worker, w1.workers) = (1, 2);
    let s = precompute::run(&w1, &mut Vec::new()).unwrap();
    assert!(!s.merged);
    drop(holder);
    let s = precompute::run(&same, &mut Vec::new()).unwrap();
    assert!(s.merged);
    let out = taidcache(&["verify", cache.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn distill_into_a_run_another_process_writes_is_refused_and_the_run_is_intact() {
    let fx = Fixture::new(Architecture::Llama, 12);
    let cache = fx.path("cache");
    precompute::run(&precompute_options(&fx, &cache, 8), &mut Vec::new()).unwrap();
    let student = fx.path("student");
    let mut spec = taidcache::testing::TinySpec::new(Architecture::Qwen3, 320);
    spec.layers = 1;
    spec.eos_token_id = 0;
    let tok = taidcache::corpus::load_tokenizer(&fx.teacher.join("tokenizer.json")).unwrap();
    taidcache::testing::write_tiny_model(&student, &spec, Some(&tok)).unwrap();
    let run = fx.path("run");
    let mut o = DistillOptions::new(&cache, &student, &run);
    o.steps = Some(2);
    o.batch_size = 2;
    o.progress = false;
    distill::run(&o, &mut Vec::new()).unwrap();
    let before = snapshot(&run);

    let holder = DirLock::acquire(
        &run,
        RUN_LOCK_FILE,
        Access::Exclusive,
        "taidcache distill",
        "--out",
    )
    .unwrap();
    let after_lock = snapshot(&run);
    let mut resume = o.clone();
    resume.resume = true;
    resume.steps = Some(4);
    let err = distill::run(&resume, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert_eq!(err, in_use_message(&run, "taidcache distill"));
    let out = taidcache(&[
        "distill",
        "--cache",
        cache.to_str().unwrap(),
        "--student",
        student.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--resume",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&in_use_message(&run, "taidcache distill")),
        "{stderr}"
    );
    assert_eq!(snapshot(&run), after_lock);
    drop(holder);
    let strip = |s: Vec<(PathBuf, Vec<u8>)>| -> Vec<(PathBuf, Vec<u8>)> {
        s.into_iter()
            .filter(|(p, _)| p != Path::new(RUN_LOCK_FILE))
            .collect()
    };
    assert_eq!(strip(snapshot(&run)), strip(before));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [1, 2]);
}

#[test]
fn out_naming_a_regular_file_is_refused_naming_the_flag_and_the_file_is_kept() {
    let fx = Fixture::new(Architecture::Llama, 4);
    let file = fx.path("taken");
    std::fs::write(&file, b"my notes").unwrap();
    let expected = format!(
        "--out: {} exists and is not a directory; choose another --out",
        file.display()
    );
    let err = precompute::run(&precompute_options(&fx, &file, 8), &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert_eq!(err, expected);
    // distill checks --cache first: give it a real one.
    let cache = fx.path("cache");
    precompute::run(&precompute_options(&fx, &cache, 8), &mut Vec::new()).unwrap();
    let mut o = DistillOptions::new(&cache, &fx.teacher, &file);
    o.steps = Some(1);
    o.progress = false;
    let err = distill::run(&o, &mut Vec::new()).unwrap_err().to_string();
    assert_eq!(err, expected);
    assert_eq!(std::fs::read(&file).unwrap(), b"my notes");
}

/// Issue #19, item 14 (here for want of a docs module of mine): the README and `--help` say
/// what `expand_inputs` does, which reads directories at every depth.
#[test]
fn readme_and_help_say_corpus_directories_are_read_recursively() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `--corpus"))
        .expect("README has a --corpus row");
    assert!(
        row.contains("recursively") && !row.contains("one level"),
        "{row}"
    );
    let out = taidcache(&["precompute", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("at any depth"), "{help}");

    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("corpus/a/b");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("doc.txt"), "deep").unwrap();
    let files = taidcache::corpus::expand_inputs(&[dir.path().join("corpus")]).unwrap();
    assert_eq!(files, [deep.join("doc.txt")]);
}
