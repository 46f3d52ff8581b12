//! End to end: tiny teachers of every architecture → precompute → shards, checked against the
//! dense forward, read by pyarrow, killed and resumed, split over workers.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use candle_core::{DType, Device, Tensor, D};
use taidcache::cache::manifest::Manifest;
use taidcache::model::{Mode, ModelDir};
use taidcache::precompute::{self, PrecomputeOptions};

fn options(fx: &Fixture, out: &str) -> PrecomputeOptions {
    let mut o = PrecomputeOptions::new(&fx.teacher, vec![fx.corpus.clone()], fx.path(out));
    o.top_k = 8;
    o.seq_len = 24;
    o.batch_size = 3;
    o.shard_rows = 4;
    o.progress = false;
    o
}

/// f16 rounding bound for a value near `x`: half an ulp (2^-11 relative), plus f32 noise.
fn f16_tol(x: f32) -> f32 {
    x.abs() * 2f32.powi(-11) + 1e-6
}

#[test]
fn cached_topk_equals_dense_log_softmax_of_the_same_forward() {
    for arch in ALL_ARCHS {
        let fx = Fixture::new(arch, 30);
        let opts = options(&fx, "cache");
        let summary = precompute::run(&opts, &mut Vec::new()).unwrap();
        assert!(
            summary.sequences_written >= 3,
            "{arch:?}: corpus too small: {summary:?}"
        );
        let rows = read_rows(&opts.out);
        assert_eq!(rows.len() as u64, summary.sequences_written);

        let teacher = ModelDir::open(&fx.teacher)
            .unwrap()
            .load(DType::F32, &Device::Cpu)
            .unwrap();
        let (s, k) = (opts.seq_len, opts.top_k);
        let (mut worst_lp, mut worst_tail) = (0f32, 0f64);
        for row in &rows {
            let ids = Tensor::from_slice(&row.input_ids, (1, s), &Device::Cpu).unwrap();
            let logits = teacher.forward(&ids, Mode::Infer).unwrap();
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
            let logp: Vec<Vec<f32>> = logp.squeeze(0).unwrap().to_vec2().unwrap();
            for (p, dense) in logp.iter().enumerate() {
                let mut order: Vec<usize> = (0..dense.len()).collect();
                order.sort_by(|&a, &b| dense[b].total_cmp(&dense[a]).then(a.cmp(&b)));
                let got_ids = &row.topk_ids[p * k..(p + 1) * k];
                let want: Vec<u32> = order[..k].iter().map(|&i| i as u32).collect();
                assert_eq!(
                    got_ids,
                    &want[..],
                    "{arch:?} seq {} pos {p}: ids",
                    row.seq_ids[0]
                );
                for j in 0..k {
                    let got = row.topk_logprobs[p * k + j].to_f32();
                    let want = dense[order[j]];
                    let err = (got - want).abs();
                    assert!(
                        err <= f16_tol(want),
                        "{arch:?} pos {p} rank {j}: {got} vs {want}"
                    );
                    worst_lp = worst_lp.max(err);
                }
                let tail: f64 = order[k..].iter().map(|&i| (dense[i] as f64).exp()).sum();
                let rel = (row.tail_logmass[p] as f64).exp() / tail - 1.0;
                assert!(
                    rel.abs() < 1e-5,
                    "{arch:?} pos {p}: tail mass relative error {rel}"
                );
                worst_tail = worst_tail.max(rel.abs());
            }
        }
        eprintln!("{arch:?}: {} rows, worst logprob error {worst_lp:.2e}, worst tail rel. error {worst_tail:.2e}", rows.len());
    }
}

#[test]
fn pyarrow_reads_every_shard_with_the_documented_schema() {
    let fx = Fixture::new(taidcache::model::Architecture::Qwen2, 20);
    let opts = options(&fx, "cache");
    precompute::run(&opts, &mut Vec::new()).unwrap();
    assert_check_cache_py_accepts(&opts.out, &[]);
}

#[test]
fn verify_and_inspect_accept_a_fresh_cache() {
    let fx = Fixture::new(taidcache::model::Architecture::Llama, 20);
    let opts = options(&fx, "cache");
    precompute::run(&opts, &mut Vec::new()).unwrap();
    let cache = opts.out.to_str().unwrap();
    let v = taidcache(&["verify", cache]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let i = taidcache(&["inspect", cache, "--json"]);
    assert!(i.status.success(), "{}", String::from_utf8_lossy(&i.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
    let m = Manifest::load(&opts.out.join("manifest.json")).unwrap();
    assert_eq!(summary["sequences"].as_u64(), m.total_sequences);

    // `inspect --json | head -c 0`: a reader that leaves early is not an error (it was
    // "invalid JSON: Broken pipe", exit 1).
    for args in [vec!["inspect", cache, "--json"], vec!["inspect", cache]] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // closed before the summary is written
        let o = child.wait_with_output().unwrap();
        assert_eq!(
            (o.status.code(), String::from_utf8_lossy(&o.stderr).as_ref()),
            (Some(0), ""),
            "{args:?}"
        );
    }
}

#[test]
fn rerun_after_sigkill_yields_the_rows_of_an_uninterrupted_run() {
    let mut spec = taidcache::testing::TinySpec::new(taidcache::model::Architecture::Llama, 320);
    spec.hidden_size = 128;
    spec.intermediate_size = 256;
    spec.layers = 4;
    let fx = Fixture::with_spec(spec, 400);
    let reference = {
        let mut o = options(&fx, "reference");
        o.shard_rows = 2;
        precompute::run(&o, &mut Vec::new()).unwrap();
        read_rows(&o.out)
    };
    assert!(reference.len() >= 20, "only {} rows", reference.len());

    let out = fx.path("killed");
    let args = |out: &Path| {
        vec![
            "precompute".to_string(),
            "--teacher".into(),
            fx.teacher.display().to_string(),
            "--corpus".into(),
            fx.corpus.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--top-k".into(),
            "8".into(),
            "--seq-len".into(),
            "24".into(),
            "--batch-size".into(),
            "3".into(),
            "--shard-rows".into(),
            "2".into(),
        ]
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args(args(&out))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a few shards are published, well before the end.
    let manifest = out.join("manifest.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(m) = Manifest::load(&manifest) {
            if m.shards.len() >= 3 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "precompute published no shard in time"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let m = Manifest::load(&manifest).unwrap();
    assert!(
        !m.complete,
        "the run finished before it was killed; the test needs a longer corpus"
    );
    let total_shards = reference.len().div_ceil(2);
    assert!(
        m.shards.len() < total_shards,
        "{} of {total_shards} shards done",
        m.shards.len()
    );
    // Every listed shard is whole; every file under a final name reads completely.
    for s in &m.shards {
        let bytes = std::fs::read(out.join(&s.path)).unwrap();
        assert_eq!(taidcache::hash::xxh3_hex(&bytes), s.xxh3, "{}", s.path);
    }
    for entry in std::fs::read_dir(out.join("shards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "parquet") {
            assert_eq!(
                read_shard_rows(&path).len(),
                2,
                "{} is under a final name but not whole",
                path.display()
            );
        }
    }

    let rerun = taidcache(&args(&out).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    assert!(
        stdout.contains(&format!("resumed {} shards", m.shards.len())),
        "{stdout}"
    );
    assert_same_rows(&read_rows(&out), &reference);
    let leftovers: Vec<_> = std::fs::read_dir(out.join("shards"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn three_worker_processes_and_merge_equal_one_process() {
    let fx = Fixture::new(taidcache::model::Architecture::Qwen3, 60);
    let single = {
        let o = options(&fx, "single");
        precompute::run(&o, &mut Vec::new()).unwrap();
        read_rows(&o.out)
    };
    let out = fx.path("workers");
    let (teacher, corpus, outs) = (
        fx.teacher.display().to_string(),
        fx.corpus.display().to_string(),
        out.display().to_string(),
    );
    let children: Vec<_> = (0..3)
        .map(|i| {
            let i = i.to_string();
            std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
                .args([
                    "precompute",
                    "--teacher",
                    &teacher,
                    "--corpus",
                    &corpus,
                    "--out",
                    &outs,
                    "--top-k",
                    "8",
                    "--seq-len",
                    "24",
                    "--batch-size",
                    "3",
                    "--shard-rows",
                    "4",
                    "--worker",
                    &i,
                    "--workers",
                    "3",
                ])
                .output_async()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let merge = taidcache(&["merge", &outs]);
    assert!(
        merge.status.success(),
        "{}",
        String::from_utf8_lossy(&merge.stderr)
    );
    assert!(
        single.len() >= 9,
        "want shards for every worker, got {} rows",
        single.len()
    );
    assert_same_rows(&read_rows(&out), &single);
    let m = Manifest::load(&out.join("manifest.json")).unwrap();
    assert!(m.complete && m.worker.is_none());
    assert_eq!(m.total_sequences, Some(single.len() as u64));
}

trait SpawnOutput {
    fn output_async(&mut self) -> std::process::Child;
}

impl SpawnOutput for std::process::Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[test]
fn bf16_forward_picks_nearly_the_same_top_ids() {
    let fx = Fixture::new(taidcache::model::Architecture::Mistral, 12);
    let f32_rows = {
        let o = options(&fx, "f32");
        precompute::run(&o, &mut Vec::new()).unwrap();
        read_rows(&o.out)
    };
    let mut o = options(&fx, "bf16");
    o.dtype = taidcache::model::FloatType::Bf16;
    precompute::run(&o, &mut Vec::new()).unwrap();
    let bf16_rows = read_rows(&o.out);
    let k = o.top_k;
    let (mut same, mut total) = (0, 0);
    for (a, b) in f32_rows.iter().zip(&bf16_rows) {
        for p in 0..o.seq_len {
            total += 1;
            same += usize::from(a.topk_ids[p * k] == b.topk_ids[p * k]);
        }
    }
    let agree = same as f64 / total as f64;
    assert!(
        agree > 0.9,
        "bf16 top-1 agrees with f32 on only {agree:.3} of positions"
    );
    // The cache says which forward made it, and the tail masses agree to bf16 rounding.
    let manifest = Manifest::load(&o.out.join("manifest.json")).unwrap();
    assert_eq!(manifest.dtype, "bf16");
    let worst = f32_rows
        .iter()
        .zip(&bf16_rows)
        .flat_map(|(a, b)| a.tail_logmass.iter().zip(&b.tail_logmass))
        .fold(0f32, |w, (x, y)| w.max((x - y).abs()));
    assert!(worst < 0.05, "tail log-masses differ by up to {worst}");
}

#[test]
fn compact_and_steps_caches_keep_ids_and_tails_and_round_log_probs_within_their_bounds() {
    use taidcache::cache::{levels, Encoding};
    let fx = Fixture::new(taidcache::model::Architecture::Llama, 20);
    let plain = options(&fx, "plain");
    precompute::run(&plain, &mut Vec::new()).unwrap();
    let a = read_rows(&plain.out);
    for (encoding, version, value_encoding) in [
        (Encoding::Steps, 2, "u8-steps"),
        (Encoding::Compact, 3, "u8-levels"),
    ] {
        let mut compact = options(&fx, encoding.name());
        compact.encoding = encoding;
        precompute::run(&compact, &mut Vec::new()).unwrap();
        let m = Manifest::load(&compact.out.join("manifest.json")).unwrap();
        assert_eq!(
            (m.format_version, m.value_encoding.as_str()),
            (version, value_encoding)
        );

        let b = read_rows(&compact.out);
        assert_eq!(a.len(), b.len());
        // Steps: each log-prob within half a step of 0.125 nats; compact (each position sorted
        // by id): each probability within its level's bound. `worst` is in units of the bound.
        let mut worst = 0f64;
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.seq_ids, y.seq_ids);
            assert_eq!(x.input_ids, y.input_ids);
            assert_eq!(x.tail_logmass, y.tail_logmass);
            let k = x.k;
            for p in 0..x.tail_logmass.len() {
                let r = p * k..(p + 1) * k;
                let mut exact: Vec<(u32, f32)> = x.topk_ids[r.clone()]
                    .iter()
                    .copied()
                    .zip(x.topk_logprobs[r.clone()].iter().map(|v| v.to_f32()))
                    .collect();
                if encoding == Encoding::Compact {
                    exact.sort_unstable_by_key(|&(id, _)| id);
                }
                let ids: Vec<u32> = exact.iter().map(|e| e.0).collect();
                assert_eq!(
                    &y.topk_ids[r.clone()],
                    &ids[..],
                    "{encoding:?} position {p}"
                );
                for (&(_, e), d) in exact.iter().zip(&y.topk_logprobs[r]) {
                    let d = d.to_f32();
                    let err = if encoding == Encoding::Steps {
                        let tol = taidcache::cache::LOGPROB_STEP / 2.0 + f16_tol(e) + f16_tol(d);
                        f64::from((e - d).abs() / tol)
                    } else {
                        let (pe, pd) = (f64::from(e).exp(), f64::from(d).exp());
                        let tol = levels::error_bound(pd) + (pe + pd) * 2f64.powi(-10);
                        (pe - pd).abs() / tol
                    };
                    worst = worst.max(err);
                }
            }
        }
        assert!(
            worst <= 1.0,
            "{encoding:?}: worst error {worst:.3} of its bound"
        );

        // The CLI checks and plain pyarrow (schema, decoded mass) accept it.
        let cache = compact.out.to_str().unwrap();
        let v = taidcache(&["verify", cache]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
        let i = taidcache(&["inspect", cache, "--json"]);
        assert!(i.status.success(), "{}", String::from_utf8_lossy(&i.stderr));
        assert_check_cache_py_accepts(&compact.out, &["--require-jsonschema"]);
    }
}

#[test]
fn a_manifest_write_cut_by_a_kill_does_not_block_the_rerun() {
    let fx = Fixture::new(taidcache::model::Architecture::Llama, 20);
    let opts = options(&fx, "cache");
    precompute::run(&opts, &mut Vec::new()).unwrap();
    let reference = read_rows(&opts.out);
    // A run killed after its second shard, in the middle of rewriting the manifest: the old
    // manifest (one shard fewer) is whole, `manifest.json.tmp` is a fragment.
    let path = opts.out.join("manifest.json");
    let mut m = Manifest::load(&path).unwrap();
    assert!(m.shards.len() >= 3, "{} shards", m.shards.len());
    m.shards.truncate(2);
    m.complete = false;
    m.save_atomic(&path).unwrap();
    std::fs::write(
        opts.out.join("manifest.json.tmp"),
        b"{\"format_version\": 1, \"tea",
    )
    .unwrap();
    let mut log = Vec::new();
    precompute::run(&opts, &mut log).unwrap();
    assert!(
        String::from_utf8_lossy(&log).contains("resumed 2 shards"),
        "{}",
        String::from_utf8_lossy(&log)
    );
    assert!(!opts.out.join("manifest.json.tmp").exists());
    assert_same_rows(&read_rows(&opts.out), &reference);
}

#[test]
fn a_starting_worker_deletes_only_its_own_unfinished_shards() {
    let fx = Fixture::new(taidcache::model::Architecture::Llama, 20);
    let mut o = options(&fx, "cache");
    o.workers = 2;
    o.worker = 0;
    std::fs::create_dir_all(o.out.join("shards")).unwrap();
    // Worker 1 is writing shard 1 right now; worker 0 was killed while writing shard 0.
    let theirs = o.out.join("shards/part-00001.parquet.tmp");
    let ours = o.out.join("shards/part-00000.parquet.tmp");
    std::fs::write(&theirs, b"being written by worker 1").unwrap();
    std::fs::write(&ours, b"left by a kill").unwrap();
    precompute::run(&o, &mut Vec::new()).unwrap();
    assert!(
        theirs.exists(),
        "worker 0 deleted worker 1's shard in progress"
    );
    assert!(!ours.exists());
    assert!(o.out.join("shards/part-00000.parquet").exists());
}

#[test]
fn a_teacher_with_non_finite_logits_fails_naming_the_position_and_leaves_no_complete_cache() {
    let fx = Fixture::new(taidcache::model::Architecture::Llama, 20);
    // The final norm's weights NaN: every logit of every position is NaN.
    let weights = fx.teacher.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let norm = tensors
        .get("model.norm.weight")
        .expect("final norm")
        .clone();
    let nan = Tensor::full(f32::NAN, norm.shape(), &Device::Cpu).unwrap();
    tensors.insert("model.norm.weight".into(), nan);
    candle_core::safetensors::save(&tensors, &weights).unwrap();

    let opts = options(&fx, "cache");
    let err = precompute::run(&opts, &mut Vec::new())
        .unwrap_err()
        .to_string();
    // The top-k thread's own error, not the teacher's "the top-k stage stopped".
    assert!(
        err.contains("non-finite logit") && err.contains("sequence 0 position 0"),
        "{err}"
    );
    // The forward already ran in f32: the remedy is not "try --dtype f32".
    assert!(
        err.contains("already runs in f32") && !err.contains("try --dtype f32"),
        "{err}"
    );
    let manifest = opts.out.join("manifest.json");
    if manifest.exists() {
        let m = Manifest::load(&manifest).unwrap();
        assert!(!m.complete && m.shards.is_empty(), "{m:?}");
    }
}
