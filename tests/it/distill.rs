//! distill end to end: offline (from a lossless cache) equals online (teacher in process, dense
//! TAID), a killed run resumes to the same result, bad input is refused clearly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use candle_core::{DType, Device, Tensor, D};
use taidcache::distill::loader::{Cursor, Loader, LoaderOptions};
use taidcache::distill::optim::{clip_factor, grad_norm, AdamW, AdamWConfig};
use taidcache::distill::schedule::{LrSchedule, TaidSchedule};
use taidcache::distill::{self, DistillOptions};
use taidcache::model::train::Student;
use taidcache::model::{Architecture, Mode, ModelDir};
use taidcache::precompute::{self, PrecomputeOptions};

const SEQ: usize = 16;

/// A teacher, a lossless cache (k = vocab) of it, and a student directory sharing its tokenizer.
struct Setup {
    fx: Fixture,
    cache: PathBuf,
    student: PathBuf,
}

fn setup(docs: usize, k: Option<usize>) -> Setup {
    let fx = Fixture::new(Architecture::Llama, docs);
    let cache = fx.path("cache");
    let mut o = PrecomputeOptions::new(&fx.teacher, vec![fx.corpus.clone()], &cache);
    o.top_k = k.unwrap_or(320);
    o.seq_len = SEQ;
    o.batch_size = 4;
    o.shard_rows = 8;
    o.progress = false;
    precompute::run(&o, &mut Vec::new()).unwrap();
    let student = fx.student("student", 42);
    Setup { fx, cache, student }
}

fn options(s: &Setup, out: &str, steps: u64) -> DistillOptions {
    let mut o = DistillOptions::new(&s.cache, &s.student, s.fx.path(out));
    o.steps = Some(steps);
    o.batch_size = 4;
    o.lr = 3e-3;
    o.warmup = 2;
    o.alpha = 5e-2;
    o.progress = false;
    o
}

fn metric_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn offline_from_a_lossless_cache_equals_online_dense_taid() {
    let s = setup(40, None);
    let steps = 20;
    let opts = options(&s, "offline", steps);
    distill::run(&opts, &mut Vec::new()).unwrap();
    let offline: Vec<f64> = metric_lines(&opts.out)
        .iter()
        .map(|l| l["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(offline.len(), steps as usize);

    // Online: the teacher in process, dense TAID with candle ops and autograd through the full
    // logits. Teacher log-probs are rounded to f16 as the cache stores them, so the comparison
    // isolates the pipeline (loader, sparse targets, chunked lm_head backward) from the storage
    // precision, which the precompute tests bound separately.
    let dev = Device::Cpu;
    let teacher = ModelDir::open(&s.fx.teacher)
        .unwrap()
        .load(DType::F32, &dev)
        .unwrap();
    let student = Student::from_dir(&s.student, opts.seed, &dev).unwrap();
    let manifest =
        taidcache::cache::manifest::Manifest::load(&s.cache.join("manifest.json")).unwrap();
    let cache_handle = taidcache::cache::Cache::new(&s.cache, manifest.clone()).unwrap();
    let (train, _) = cache_handle.units(0.0).unwrap();
    let lopts = LoaderOptions::train(opts.batch_size, opts.seed);
    let mut loader = Loader::new(&cache_handle, &train, lopts, Cursor::default()).unwrap();
    let mut opt = AdamW::new(
        student.params.clone(),
        AdamWConfig::with_lr_and_decay(opts.lr, opts.weight_decay),
    )
    .unwrap();
    let mut sched = TaidSchedule::new(opts.t_start, opts.t_end, opts.alpha, opts.beta, steps, true);
    let lr = LrSchedule {
        base_lr: opts.lr,
        warmup_steps: opts.warmup,
        total_steps: steps,
        min_lr_ratio: 0.0,
    };
    let mut worst = 0f64;
    for step in 0..steps {
        let batch = loader.next_batch().unwrap().unwrap().data;
        let (b, sl) = (batch.rows(), batch.seq_len);
        let ids = Tensor::from_slice(&batch.input_ids, (b, sl), &dev).unwrap();
        let z =
            candle_nn::ops::log_softmax(&teacher.forward(&ids, Mode::Infer).unwrap(), D::Minus1)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
        let logits = student.model.forward(&ids, Mode::Train).unwrap();
        let t = sched.t();
        let mixed = ((logits.detach() * (1.0 - t)).unwrap() + (z * t).unwrap()).unwrap();
        let log_pt = candle_nn::ops::log_softmax(&mixed, D::Minus1).unwrap();
        let log_q = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let kl = (log_pt.exp().unwrap() * (log_pt - log_q).unwrap())
            .unwrap()
            .sum(D::Minus1)
            .unwrap();
        let mask: Vec<f32> = batch
            .loss_mask
            .iter()
            .map(|&m| if m { 1.0 } else { 0.0 })
            .collect();
        let n: f32 = mask.iter().sum();
        let mask = Tensor::from_vec(mask, (b, sl), &dev).unwrap();
        let loss = ((kl * mask).unwrap().sum_all().unwrap() / n as f64).unwrap();
        let value = loss.to_scalar::<f32>().unwrap() as f64;
        let grads = loss.backward().unwrap();
        let norm = grad_norm(&student.params, &grads).unwrap();
        opt.set_lr(lr.lr(step));
        opt.step(&grads, clip_factor(norm, opts.max_grad_norm))
            .unwrap();
        sched.update(value);
        let diff = (value - offline[step as usize]).abs();
        worst = worst.max(diff);
        assert!(
            diff < 1e-4,
            "step {}: online {value} vs offline {}",
            step + 1,
            offline[step as usize]
        );
        loader.recycle(batch);
    }
    eprintln!(
        "offline vs online: worst |Δloss| over {steps} steps = {worst:.2e}; losses {:?}",
        offline
    );
}

fn cli_args(s: &Setup, out: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "distill",
        "--cache",
        s.cache.to_str().unwrap(),
        "--student",
        s.student.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        &steps.to_string(),
        "--batch-size",
        "4",
        "--lr",
        "3e-3",
        "--alpha",
        "0.05",
        "--save-every",
        "3",
        "--eval-every",
        "5",
        "--eval-fraction",
        "0.2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A flag in `extra` replaces the default's value; the others are appended.
    let mut i = 0;
    while i < extra.len() {
        let flag = extra[i];
        let value = extra.get(i + 1).filter(|v| !v.starts_with("--"));
        match (a.iter().position(|x| x == flag), value) {
            (Some(at), Some(v)) => a[at + 1] = v.to_string(),
            (None, Some(v)) => a.extend([flag.to_string(), v.to_string()]),
            (_, None) => a.push(flag.to_string()),
        }
        i += if value.is_some() { 2 } else { 1 };
    }
    a
}

fn run_cli(args: &[String]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args(args)
        .output()
        .unwrap()
}

fn strip_time(lines: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    lines
        .into_iter()
        .map(|mut l| {
            l.as_object_mut().unwrap().remove("elapsed_s");
            l
        })
        .collect()
}

#[test]
fn run_killed_after_a_checkpoint_resumes_to_the_same_weights_and_metrics() {
    let s = setup(60, Some(16));
    let steps = 150;
    let reference = s.fx.path("reference");
    let o = run_cli(&cli_args(&s, &reference, steps, &[]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let killed = s.fx.path("killed");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args(cli_args(&s, &killed, steps, &[]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !killed.join("checkpoints/step-6").exists() {
        assert!(Instant::now() < deadline, "no checkpoint in time");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed.join("final").exists(),
        "the run finished before the kill; make it longer"
    );

    let o = run_cli(&cli_args(&s, &killed, steps, &["--resume"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("resuming from step"));

    let a = strip_time(metric_lines(&reference));
    let b = strip_time(metric_lines(&killed));
    assert_eq!(a.len(), b.len(), "metrics line counts differ");
    for (x, y) in a.iter().zip(&b) {
        for (key, vx) in x.as_object().unwrap() {
            let vy = &y[key];
            match (vx.as_f64(), vy.as_f64()) {
                (Some(p), Some(q)) => assert!(
                    (p - q).abs() <= 1e-6 * p.abs().max(1.0),
                    "{key}: {p} vs {q} in {x}"
                ),
                _ => assert_eq!(vx, vy, "{key} in {x}"),
            }
        }
    }
    let wa = std::fs::read(reference.join("final/model.safetensors")).unwrap();
    let wb = std::fs::read(killed.join("final/model.safetensors")).unwrap();
    assert!(wa == wb, "final weights differ after resume");
}

fn fails(args: &[String], wanted: &[&str]) -> String {
    let o = run_cli(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure: {args:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{stderr}"
    );
    for w in wanted {
        assert!(stderr.contains(w), "`{w}` not in {stderr}");
    }
    stderr.into_owned()
}

#[test]
fn bad_distill_input_is_named() {
    let s = setup(20, Some(8));
    let out = s.fx.path("bad");
    // Missing cache.
    let mut a = cli_args(&s, &out, 3, &[]);
    a[2] = s.fx.path("nope").display().to_string();
    fails(&a, &["--cache", "nope"]);
    // --steps 0.
    fails(&cli_args(&s, &out, 0, &[]), &["--steps"]);
    // Student vocabulary smaller than the cache's.
    let small = s.fx.path("small-student");
    let mut spec = taidcache::testing::TinySpec::new(Architecture::Llama, 100);
    spec.layers = 1;
    taidcache::testing::write_tiny_model(&small, &spec, None).unwrap();
    let mut a = cli_args(&s, &out, 3, &[]);
    a[4] = small.display().to_string();
    fails(&a, &["vocab"]);
    // A manifest of another format version.
    let m = s.cache.join("manifest.json");
    let original = std::fs::read_to_string(&m).unwrap();
    std::fs::write(
        &m,
        original.replace("\"format_version\": 1", "\"format_version\": 9"),
    )
    .unwrap();
    fails(
        &cli_args(&s, &out, 3, &[]),
        &["manifest.json", "format version 9"],
    );
    std::fs::write(&m, &original).unwrap();
    // A corrupt shard: caught by decode, naming the file.
    let shard = s.cache.join("shards/part-00000.parquet");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    fails(&cli_args(&s, &out, 3, &[]), &["part-00000.parquet"]);
    std::fs::write(&shard, &bytes).unwrap();
    // A non-finite loss stops with a clear message naming the last good checkpoint, which stays.
    let nan = s.fx.path("nan");
    let err = fails(
        &cli_args(
            &s,
            &nan,
            5,
            &["--lr", "1e30", "--max-grad-norm", "0", "--save-every", "1"],
        ),
        &["not finite", "the last good checkpoint is"],
    );
    let kept = err
        .trim()
        .rsplit("the last good checkpoint is ")
        .next()
        .unwrap();
    assert!(kept.contains("checkpoints/step-"), "{err}");
    assert!(
        Path::new(kept).join("model.safetensors").exists(),
        "{kept} is gone"
    );
    assert!(
        !nan.join("final").exists(),
        "no final model from a failed run"
    );
}

/// Held-out eval lines of a run: (step, ce, kl_teacher).
fn eval_curve(run: &Path) -> Vec<(u64, f64, f64)> {
    metric_lines(run)
        .iter()
        .filter(|l| l["split"] == "eval")
        .map(|l| {
            (
                l["step"].as_u64().unwrap(),
                l["ce"].as_f64().unwrap(),
                l["kl_teacher"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn taid_student_kl_to_a_ce_trained_teacher_falls() {
    let fx = Fixture::new(Architecture::Llama, 300);
    let precompute_into = |teacher: &Path, out: &str, k: usize| {
        let mut o = PrecomputeOptions::new(teacher, vec![fx.corpus.clone()], fx.path(out));
        o.top_k = k;
        o.seq_len = 32;
        o.batch_size = 8;
        o.shard_rows = 64;
        o.progress = false;
        precompute::run(&o, &mut Vec::new()).unwrap();
        fx.path(out)
    };
    // The teacher learns the corpus with plain next-token CE (the cache only supplies tokens).
    let tokens = precompute_into(&fx.teacher, "tokens", 4);
    let mut o = DistillOptions::new(&tokens, &fx.teacher, fx.path("teacher-run"));
    o.objective = distill::objectives::Objective::Ce;
    o.steps = Some(120);
    o.batch_size = 8;
    o.lr = 1e-2;
    o.warmup = 10;
    o.progress = false;
    distill::run(&o, &mut Vec::new()).unwrap();
    let teacher = fx.path("teacher-run/final");

    // A one-layer student distilled from the trained teacher's top-32 cache with TAID.
    let cache = precompute_into(&teacher, "cache", 32);
    let student = fx.path("student");
    let mut spec = taidcache::testing::TinySpec::new(Architecture::Qwen3, 320);
    spec.layers = 1;
    spec.seed = 5;
    let tok = taidcache::corpus::load_tokenizer(&fx.teacher.join("tokenizer.json")).unwrap();
    taidcache::testing::write_tiny_model(&student, &spec, Some(&tok)).unwrap();
    let mut o = DistillOptions::new(&cache, &student, fx.path("taid-run"));
    o.steps = Some(150);
    o.batch_size = 8;
    o.lr = 1e-2;
    o.warmup = 10;
    o.alpha = 5e-3;
    o.eval_every = 30;
    o.eval_fraction = 0.2;
    o.progress = false;
    let summary = distill::run(&o, &mut Vec::new()).unwrap();
    let curve = eval_curve(&o.out);
    eprintln!(
        "held-out (step, ce, kl_teacher): {curve:?}; data wait {:.2}%",
        100.0 * summary.data_wait_share
    );
    assert_eq!(
        curve.iter().map(|c| c.0).collect::<Vec<_>>(),
        [0, 30, 60, 90, 120, 150]
    );
    let (first, last) = (curve[0].2, curve.last().unwrap().2);
    assert!(
        last < 0.25 * first,
        "held-out KL to the teacher went from {first} to {last}"
    );
    assert!(
        summary.final_t > 0.4 + 0.6 * 149.0 / 150.0 - 1e-9,
        "t reached its linear floor"
    );
}

#[test]
fn distill_from_a_compact_cache_tracks_the_run_from_the_plain_one() {
    let s = setup(12, Some(16));
    let compact = s.fx.path("cache-compact");
    let mut o = PrecomputeOptions::new(&s.fx.teacher, vec![s.fx.corpus.clone()], &compact);
    o.top_k = 16;
    o.seq_len = SEQ;
    o.batch_size = 4;
    o.shard_rows = 8;
    o.progress = false;
    o.encoding = taidcache::cache::Encoding::Compact;
    precompute::run(&o, &mut Vec::new()).unwrap();

    let plain_run = options(&s, "plain-run", 12);
    let mut compact_run = options(&s, "compact-run", 12);
    compact_run.cache = compact;
    distill::run(&plain_run, &mut Vec::new()).unwrap();
    distill::run(&compact_run, &mut Vec::new()).unwrap();
    let steps = |run: &Path| -> Vec<(f64, f64)> {
        metric_lines(run)
            .iter()
            .filter(|l| l["step"].is_u64() && l["loss"].is_f64())
            .map(|l| (l["loss"].as_f64().unwrap(), l["kl"].as_f64().unwrap_or(0.0)))
            .collect()
    };
    let (a, b) = (steps(&plain_run.out), steps(&compact_run.out));
    assert_eq!(a.len(), 12, "{a:?}");
    assert_eq!(a.len(), b.len());
    // The targets differ by at most one quantization level per probability (format v3), so the
    // losses of the same student on the same batches stay within a few hundredths.
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x.0 - y.0).abs() / x.0.abs().max(1.0))
        .fold(0f64, f64::max);
    assert!(
        worst < 0.02,
        "worst relative loss difference {worst:.4}: {a:?} vs {b:?}"
    );
    assert!(
        worst > 0.0,
        "the compact run should not be bit-identical: {a:?}"
    );
}

/// `--precision bf16` runs the output projection's products in bf16: 12 steps track the f32
/// run's losses to within 1e-3 relative (measured 9e-6: the weights' bf16 rounding moves the
/// logits by about 2⁻⁹ with random signs), without being the same run; on a GPU and on the
/// device step path it is refused naming the flag, before anything is written.
#[test]
fn distill_with_bf16_output_products_tracks_the_f32_run() {
    let s = setup(12, Some(16));
    let f32_run = options(&s, "f32-run", 12);
    let mut bf16_run = options(&s, "bf16-run", 12);
    bf16_run.precision = distill::Precision::Bf16;
    distill::run(&f32_run, &mut Vec::new()).unwrap();
    distill::run(&bf16_run, &mut Vec::new()).unwrap();
    let losses = |run: &Path| -> Vec<f64> {
        metric_lines(run)
            .iter()
            .filter_map(|l| l["loss"].as_f64())
            .collect()
    };
    let (a, b) = (losses(&f32_run.out), losses(&bf16_run.out));
    assert_eq!((a.len(), b.len()), (12, 12), "{a:?} {b:?}");
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
        .fold(0f64, f64::max);
    assert!(worst < 1e-3, "{a:?} vs {b:?}");
    assert!(worst > 0.0, "the bf16 run equals the f32 one: {a:?}");

    let mut gpu = options(&s, "gpu-run", 12);
    gpu.precision = distill::Precision::Bf16;
    gpu.device = taidcache::model::DeviceSpec::Cuda(0);
    let e = distill::run(&gpu, &mut Vec::new()).unwrap_err().to_string();
    assert!(e.starts_with("--precision: ") && e.contains("CPU"), "{e}");
    assert!(
        !gpu.out.exists(),
        "a refused run created {}",
        gpu.out.display()
    );

    // The device step path (a testing aid) has no bf16 products: one line, nothing written.
    let refused = s.fx.path("device-path-run");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args(cli_args(&s, &refused, 12, &["--precision", "bf16"]))
        .env("TAIDCACHE_STEP_PATH", "device")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.trim().lines().count() == 1 && stderr.contains("--precision"),
        "{stderr}"
    );
    assert!(
        !refused.exists(),
        "a refused run created {}",
        refused.display()
    );
}

#[test]
fn the_device_step_path_from_the_cli_tracks_the_host_path_and_a_bad_switch_is_named() {
    let s = setup(30, Some(16));
    let run = |out: &Path, path: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
            .args(cli_args(
                &s,
                out,
                12,
                &["--objective", "taid", "--tail", "uniform"],
            ))
            .env("TAIDCACHE_STEP_PATH", path)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        strip_time(metric_lines(out))
    };
    let host = run(&s.fx.path("host"), "host");
    let device = run(&s.fx.path("device"), "device");
    assert_eq!(host.len(), device.len(), "metrics line counts differ");
    let mut compared = 0;
    for (h, d) in host.iter().zip(&device) {
        for key in [
            "loss",
            "grad_norm",
            "train_ce",
            "t",
            "ce",
            "kl_teacher",
            "ece",
            "top1_agreement",
        ] {
            if let (Some(a), Some(b)) = (h[key].as_f64(), d[key].as_f64()) {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1e-3),
                    "{key}: host {a} device {b} at step {}",
                    h["step"]
                );
                compared += 1;
            }
        }
    }
    // 12 training lines of 4 values, 4 eval lines (steps 0, 5, 10, 12) of 5 (t, ce,
    // kl_teacher, ece, top1_agreement).
    assert_eq!(compared, 12 * 4 + 4 * 5, "values compared");

    let o = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args(cli_args(&s, &s.fx.path("bad"), 12, &[]))
        .env("TAIDCACHE_STEP_PATH", "gpu")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.trim().lines().count() == 1 && stderr.contains("TAIDCACHE_STEP_PATH"),
        "{stderr}"
    );
}

#[test]
fn a_run_larger_than_the_free_memory_is_refused_before_it_writes_anything() {
    let s = setup(8, Some(16));
    let out = s.fx.path("too-big");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args(cli_args(&s, &out, 4, &[]))
        .env("TAIDCACHE_FREE_MEMORY", "1000000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.trim().lines().count() == 1
            && stderr.contains("--device")
            && stderr.contains("the largest part is the"),
        "{stderr}"
    );
    assert!(!out.exists(), "a refused run left {}", out.display());

    let cache = s.fx.path("too-big-cache");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args(["precompute", "--teacher"])
        .arg(&s.fx.teacher)
        .arg("--corpus")
        .arg(&s.fx.corpus)
        .arg("--out")
        .arg(&cache)
        .args(["--seq-len", "16"])
        .env("TAIDCACHE_FREE_MEMORY", "1000000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.trim().lines().count() == 1 && stderr.contains("the largest part is the"),
        "{stderr}"
    );
    assert!(
        !cache.exists(),
        "a refused precompute left {}",
        cache.display()
    );

    // With room, the plan is printed and the run goes on.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args(cli_args(&s, &out, 2, &[]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("estimated peak memory on cpu: "));
}
