//! `distill --resume` continues the same run or nothing: a changed flag is refused by name, only
//! complete checkpoints are resumed from, metrics are never duplicated, a finished run is left
//! alone; `--out` never overwrites a model or someone else's files; eval flags that evaluate
//! nothing, and a student too short for the cache, are refused.

use std::path::{Path, PathBuf};

use crate::common::*;
use taidcache::distill::objectives::Objective;
use taidcache::distill::targets::TailMode;
use taidcache::distill::{self, DistillOptions};
use taidcache::model::Architecture;
use taidcache::precompute::{self, PrecomputeOptions};

const SEQ: usize = 16;

struct Setup {
    fx: Fixture,
    cache: PathBuf,
    student: PathBuf,
}

fn precompute_cache(fx: &Fixture, out: &str, k: usize) -> PathBuf {
    let cache = fx.path(out);
    let mut o = PrecomputeOptions::new(&fx.teacher, vec![fx.corpus.clone()], &cache);
    o.top_k = k;
    o.seq_len = SEQ;
    o.batch_size = 4;
    o.shard_rows = 8;
    o.progress = false;
    precompute::run(&o, &mut Vec::new()).unwrap();
    cache
}

fn student(fx: &Fixture, name: &str, seed: u64, max_pos: usize) -> PathBuf {
    let dir = fx.path(name);
    let mut spec = taidcache::testing::TinySpec::new(Architecture::Qwen3, 320);
    spec.seed = seed;
    spec.layers = 1;
    spec.eos_token_id = 0;
    spec.max_position_embeddings = max_pos;
    let tok = taidcache::corpus::load_tokenizer(&fx.teacher.join("tokenizer.json")).unwrap();
    taidcache::testing::write_tiny_model(&dir, &spec, Some(&tok)).unwrap();
    dir
}

fn setup() -> Setup {
    let fx = Fixture::new(Architecture::Llama, 24);
    let cache = precompute_cache(&fx, "cache", 8);
    let student = student(&fx, "student", 42, 512);
    Setup { fx, cache, student }
}

/// A short run: 3 steps, a checkpoint after each, the last fifth of the rows held out.
fn options(s: &Setup, out: &str) -> DistillOptions {
    let mut o = DistillOptions::new(&s.cache, &s.student, s.fx.path(out));
    o.steps = Some(3);
    o.batch_size = 2;
    o.lr = 3e-3;
    o.warmup = 1;
    o.save_every = 1;
    o.eval_fraction = 0.2;
    o.progress = false;
    o
}

/// Run and return what it printed, or the error's message.
fn run(o: &DistillOptions) -> Result<String, String> {
    let mut out = Vec::new();
    match distill::run(o, &mut out) {
        Ok(_) => Ok(String::from_utf8(out).unwrap()),
        Err(e) => Err(e.to_string()),
    }
}

fn refused(o: &DistillOptions) -> String {
    match run(o) {
        Ok(out) => panic!("expected a refusal, the run succeeded: {out}"),
        Err(e) => e,
    }
}

/// (step, is_eval) of every line of `RUN/metrics.jsonl`.
fn metric_steps(run: &Path) -> Vec<(u64, bool)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["split"] == "eval")
        })
        .collect()
}

fn train_steps(run: &Path) -> Vec<u64> {
    metric_steps(run)
        .into_iter()
        .filter(|(_, eval)| !eval)
        .map(|(s, _)| s)
        .collect()
}

fn final_weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("final/model.safetensors")).unwrap()
}

#[test]
fn resume_with_any_trajectory_flag_changed_is_refused_naming_it() {
    let s = setup();
    let base = options(&s, "run");
    run(&base).unwrap();
    let before = snapshot(&base.out);
    let other_cache = precompute_cache(&s.fx, "cache-k4", 4);
    let other_student = student(&s.fx, "student-other", 7, 512);
    type Change = Box<dyn Fn(&mut DistillOptions)>;
    let table: Vec<(&str, Change)> = vec![
        ("--cache", Box::new(move |o| o.cache = other_cache.clone())),
        (
            "--student",
            Box::new(move |o| o.student = other_student.clone()),
        ),
        ("--eval-cache", {
            let c = s.cache.clone();
            Box::new(move |o| {
                o.eval_fraction = 0.0;
                o.eval_cache = Some(c.clone());
            })
        }),
        ("--steps", Box::new(|o| o.steps = Some(5))),
        (
            "--epochs",
            Box::new(|o| {
                o.steps = None;
                o.epochs = Some(2.0);
            }),
        ),
        ("--objective", Box::new(|o| o.objective = Objective::Kl)),
        ("--batch-size", Box::new(|o| o.batch_size = 3)),
        ("--grad-accum", Box::new(|o| o.grad_accum = 2)),
        ("--lr", Box::new(|o| o.lr = 1e-3)),
        ("--warmup", Box::new(|o| o.warmup = 0)),
        ("--weight-decay", Box::new(|o| o.weight_decay = 0.1)),
        ("--max-grad-norm", Box::new(|o| o.max_grad_norm = 0.5)),
        ("--t-start", Box::new(|o| o.t_start = 0.3)),
        ("--t-end", Box::new(|o| o.t_end = 0.9)),
        ("--alpha", Box::new(|o| o.alpha = 1e-3)),
        ("--beta", Box::new(|o| o.beta = 0.9)),
        (
            "--adaptive-signal",
            Box::new(|o| o.adaptive_signal = distill::AdaptiveSignal::Ce),
        ),
        ("--tail", Box::new(|o| o.tail = TailMode::Uniform)),
        ("--lambda", Box::new(|o| o.lambda = 0.2)),
        ("--ce-weight", Box::new(|o| o.ce_weight = 0.5)),
        ("--seed", Box::new(|o| o.seed = 1)),
        ("--eval-every", Box::new(|o| o.eval_every = 1)),
        ("--eval-fraction", Box::new(|o| o.eval_fraction = 0.3)),
        (
            "--precision",
            Box::new(|o| o.precision = distill::Precision::Bf16),
        ),
    ];
    for (flag, change) in &table {
        let mut o = options(&s, "run");
        o.resume = true;
        change(&mut o);
        let e = refused(&o);
        assert!(
            e.starts_with(&format!("{flag}: ")) && e.contains("was started with"),
            "{flag}: {e}"
        );
        assert!(e.contains("choose another --out"), "{flag}: {e}");
    }
    let e = {
        let mut o = options(&s, "run");
        o.resume = true;
        o.lr = 1e-3;
        refused(&o)
    };
    assert!(
        e.contains("--lr: is 0.001 but the run in") && e.contains("was started with 0.003"),
        "{e}"
    );
    assert!(
        before == snapshot(&base.out),
        "a refused resume changed the run directory"
    );
    // The CLI says it in one line and exits non-zero.
    let args: Vec<String> = [
        "distill",
        "--cache",
        s.cache.to_str().unwrap(),
        "--student",
        s.student.to_str().unwrap(),
        "--out",
        base.out.to_str().unwrap(),
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--lr",
        "3e-3",
        "--warmup",
        "1",
        "--eval-fraction",
        "0.2",
        "--seed",
        "5",
        "--resume",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = taidcache(&refs);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: --seed: is 5 but the run in"),
        "{stderr}"
    );
    // The same flags (and another --save-every, which is not part of the run) are accepted:
    // the run had finished, so there is nothing to do.
    let mut same = options(&s, "run");
    same.resume = true;
    same.save_every = 2;
    let said = run(&same).unwrap();
    assert!(said.contains("already finished (step 3 of 3)"), "{said}");
    assert!(
        before == snapshot(&base.out),
        "a no-op resume changed the run directory"
    );
}

#[test]
fn resume_skips_a_checkpoint_without_its_model_and_matches_the_uninterrupted_run() {
    let s = setup();
    let o = options(&s, "run");
    run(&o).unwrap();
    let reference = final_weights(&o.out);
    // As if killed after checkpoint 3 but before final/, and checkpoint 3 then lost its model.
    std::fs::remove_dir_all(o.out.join("final")).unwrap();
    std::fs::remove_file(o.out.join("checkpoints/step-3/model.safetensors")).unwrap();
    let mut r = o.clone();
    r.resume = true;
    let said = run(&r).unwrap();
    assert!(
        said.contains("step-3: skipping this incomplete checkpoint: model.safetensors is missing"),
        "{said}"
    );
    assert!(said.contains("resuming from step 2"), "{said}");
    assert_eq!(train_steps(&o.out), [1, 2, 3]);
    assert!(
        final_weights(&o.out) == reference,
        "the resumed run's final weights differ from the uninterrupted run's"
    );
}

#[test]
fn resume_refuses_when_no_checkpoint_is_complete_naming_the_missing_file() {
    let s = setup();
    let mut o = options(&s, "run");
    o.steps = Some(2);
    o.save_every = 2;
    run(&o).unwrap();
    std::fs::remove_dir_all(o.out.join("final")).unwrap();
    let ckpt = o.out.join("checkpoints/step-2");
    let mut r = o.clone();
    r.resume = true;

    let state = ckpt.join("trainer_state.json");
    let state_bytes = std::fs::read(&state).unwrap();
    std::fs::remove_file(&state).unwrap();
    let e = refused(&r);
    assert!(
        e.contains("step-2: trainer_state.json is missing") && e.contains("nothing to resume from"),
        "{e}"
    );
    std::fs::write(&state, &state_bytes).unwrap();

    // Same size, other bytes: caught by the checkpoint's own hashes.
    let model = ckpt.join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&model, &bytes).unwrap();
    let e = refused(&r);
    assert!(
        e.contains("model.safetensors does not match its xxh3 in checkpoint.json"),
        "{e}"
    );
    assert!(
        !o.out.join("final").exists(),
        "no final/ from a refused resume"
    );
    assert_eq!(train_steps(&o.out), [1, 2], "metrics untouched");
}

#[test]
fn resume_without_a_checkpoint_starts_over_without_duplicating_metrics() {
    let s = setup();
    let mut o = options(&s, "run");
    o.save_every = 0;
    o.eval_every = 2;
    run(&o).unwrap();
    let reference = final_weights(&o.out);
    let lines_before = metric_steps(&o.out);
    assert_eq!(
        lines_before,
        [
            (0, true),
            (1, false),
            (2, false),
            (2, true),
            (3, false),
            (3, true)
        ]
    );
    // As if killed after its last metrics line, before final/ was written.
    std::fs::remove_dir_all(o.out.join("final")).unwrap();
    let mut r = o.clone();
    r.resume = true;
    let said = run(&r).unwrap();
    assert!(
        said.contains("no checkpoint to resume from")
            && said.contains("starting over from step 0, replacing the 6 lines of metrics.jsonl"),
        "{said}"
    );
    assert_eq!(metric_steps(&o.out), lines_before, "each line exactly once");
    assert_eq!(train_steps(&o.out), [1, 2, 3]);
    assert!(final_weights(&o.out) == reference);
}

#[test]
fn resume_with_fewer_steps_than_reached_is_refused_naming_steps() {
    let s = setup();
    let mut o = options(&s, "run");
    o.steps = Some(10);
    o.save_every = 5;
    run(&o).unwrap();
    let before = snapshot(&o.out);
    let mut r = o.clone();
    r.resume = true;
    r.steps = Some(5);
    let e = refused(&r);
    assert!(
        e.starts_with("--steps: is 5 but the run in") && e.contains("was started with 10 steps"),
        "{e}"
    );
    // The same steps: finished, nothing to do, and the summary says where it stands.
    r.steps = Some(10);
    let mut out = Vec::new();
    let summary = distill::run(&r, &mut out).unwrap();
    let said = String::from_utf8(out).unwrap();
    assert!(said.contains("already finished (step 10 of 10)"), "{said}");
    assert_eq!((summary.steps, summary.resumed_from), (10, Some(10)));
    assert!(summary.final_loss.is_finite());
    assert!(before == snapshot(&o.out), "the run directory changed");
}

#[test]
fn resume_on_a_new_or_empty_directory_says_there_was_nothing_to_resume() {
    let s = setup();
    for (name, make) in [("new", false), ("empty", true)] {
        let mut o = options(&s, name);
        o.steps = Some(2);
        o.save_every = 0;
        o.resume = true;
        if make {
            std::fs::create_dir_all(&o.out).unwrap();
        }
        let said = run(&o).unwrap();
        assert!(
            said.contains("nothing to resume (no run was started there); starting a new run"),
            "{name}: {said}"
        );
        assert_eq!(train_steps(&o.out), [1, 2], "{name}");
    }
}

#[test]
fn out_with_a_model_in_final_or_foreign_files_is_not_overwritten_without_overwrite() {
    let s = setup();
    let mut o = options(&s, "run");
    o.steps = Some(2);
    o.save_every = 0;
    // A model someone put in RUN/final.
    let final_dir = o.out.join("final");
    std::fs::create_dir_all(&final_dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(s.student.join(f), final_dir.join(f)).unwrap();
    }
    let before = snapshot(&o.out);
    let e = refused(&o);
    assert!(
        e.starts_with("--out: ") && e.contains("final already holds a model; pass --overwrite"),
        "{e}"
    );
    assert!(before == snapshot(&o.out), "final/ was touched");
    let mut r = o.clone();
    r.resume = true;
    let e = refused(&r);
    assert!(e.contains("holds no taidcache run to resume"), "{e}");
    assert!(before == snapshot(&o.out), "final/ was touched");

    // A directory of other files.
    let mut f = options(&s, "foreign");
    f.steps = Some(2);
    f.save_every = 0;
    std::fs::create_dir_all(&f.out).unwrap();
    std::fs::write(f.out.join("notes.txt"), "mine").unwrap();
    let e = refused(&f);
    assert!(
        e.contains("holds files that are not a taidcache run (notes.txt); pass --overwrite"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&f.out).unwrap().count(), 1);
    f.overwrite = true;
    run(&f).unwrap();
    assert_eq!(std::fs::read(f.out.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(train_steps(&f.out), [1, 2]);

    // An earlier run: --resume or --overwrite, never silently over it.
    f.overwrite = false;
    let e = refused(&f);
    assert!(e.contains("already holds a run; pass --resume"), "{e}");
    f.overwrite = true;
    f.steps = Some(3);
    let said = run(&f).unwrap();
    assert!(
        said.contains("--overwrite: removed the earlier run's"),
        "{said}"
    );
    assert_eq!(train_steps(&f.out), [1, 2, 3], "no line of the earlier run");

    // --out naming a file.
    let mut file = options(&s, "notes.txt");
    file.out = f.out.join("notes.txt");
    let e = refused(&file);
    assert!(
        e.contains("notes.txt exists and is not a directory; choose another --out"),
        "{e}"
    );
}

#[test]
fn eval_flags_that_evaluate_nothing_or_conflict_are_refused() {
    let s = setup();
    let mut o = options(&s, "run");
    o.eval_fraction = 0.0;
    o.eval_every = 2;
    let e = refused(&o);
    assert!(
        e.starts_with("--eval-every: 2 evaluates nothing")
            && e.contains("--eval-fraction")
            && e.contains("--eval-cache"),
        "{e}"
    );
    o.eval_every = 0;
    o.eval_fraction = 0.2;
    o.eval_cache = Some(s.cache.clone());
    let e = refused(&o);
    assert!(
        e.starts_with("--eval-fraction: and --eval-cache both"),
        "{e}"
    );
    assert!(!o.out.exists(), "a refused run created {}", o.out.display());
    // The pipeline file's values reach the same check (clap's conflicts do not see them).
    let toml = s.fx.path("p.toml");
    std::fs::write(
        &toml,
        format!(
            "[distill]\neval_fraction = 0.1\neval_cache = {:?}\n",
            s.cache.display().to_string()
        ),
    )
    .unwrap();
    let out = s.fx.path("toml-run");
    let o = taidcache(&[
        "distill",
        "--config",
        toml.to_str().unwrap(),
        "--cache",
        s.cache.to_str().unwrap(),
        "--student",
        s.student.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.starts_with("error: --eval-fraction: and --eval-cache both"),
        "{stderr}"
    );
}

#[test]
fn student_with_a_context_shorter_than_the_cache_seq_len_is_refused() {
    let s = setup();
    let short = student(&s.fx, "short-student", 42, 8);
    let mut o = options(&s, "run");
    o.student = short.clone();
    let e = refused(&o);
    assert!(
        e.contains(&format!("{}", short.join("config.json").display()))
            && e.contains("field `max_position_embeddings`: 8 is below the seq_len 16"),
        "{e}"
    );
    assert!(!o.out.exists());
}

#[test]
fn non_finite_student_weights_are_named_not_blamed_on_lr() {
    let s = setup();
    let bad = s.fx.path("nan-student");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(s.student.join(f), bad.join(f)).unwrap();
    }
    let dev = candle_core::Device::Cpu;
    let mut tensors =
        candle_core::safetensors::load(s.student.join("model.safetensors"), &dev).unwrap();
    let norm = tensors.get("model.norm.weight").unwrap();
    let nan = (norm * f64::NAN).unwrap();
    tensors.insert("model.norm.weight".into(), nan);
    candle_core::safetensors::save(&tensors, bad.join("model.safetensors")).unwrap();
    let mut o = options(&s, "run");
    o.student = bad.clone();
    let e = refused(&o);
    assert!(
        e.contains("nan-student/model.safetensors")
            && e.contains("tensor `model.norm.weight` holds non-finite values")
            && !e.contains("--lr"),
        "{e}"
    );
}
