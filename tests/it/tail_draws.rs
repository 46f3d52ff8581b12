//! `precompute --tail-samples N` and `distill --tail sampled` end to end: the draws are the
//! teacher's own tail draws (recomputed from the dense forward and the documented seed), the
//! same in plain and compact caches and in a run split over workers, checked by `verify` and
//! by plain pyarrow; distill trains on them and refuses a cache without them.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use taidcache::cache::manifest::Manifest;
use taidcache::cache::Encoding;
use taidcache::distill::{self, targets::TailMode, DistillOptions};
use taidcache::model::{Architecture, Mode, ModelDir};
use taidcache::precompute::tail_sample::{position_seed, Sampler};
use taidcache::precompute::{self, PrecomputeOptions};

const DRAWS: usize = 16;

fn options(fx: &Fixture, out: &str, encoding: Encoding) -> PrecomputeOptions {
    let mut o = PrecomputeOptions::new(&fx.teacher, vec![fx.corpus.clone()], fx.path(out));
    o.top_k = 8;
    o.seq_len = 24;
    o.batch_size = 3;
    o.shard_rows = 4;
    o.progress = false;
    o.encoding = encoding;
    o.tail_samples = DRAWS;
    o
}

#[test]
fn draws_are_the_teachers_recomputed_tail_draws_in_plain_and_compact_and_pass_verify_and_pyarrow() {
    let fx = Fixture::new(Architecture::Llama, 16);
    let plain = options(&fx, "plain", Encoding::Plain);
    let compact = options(&fx, "compact", Encoding::Compact);
    for o in [&plain, &compact] {
        precompute::run(o, &mut Vec::new()).unwrap();
        let m = Manifest::load(&o.out.join("manifest.json")).unwrap();
        assert_eq!(m.tail_draws, DRAWS);
        assert_eq!(
            m.format_version,
            if o.encoding == Encoding::Plain { 4 } else { 5 }
        );
        let cache = o.out.to_str().unwrap();
        let v = taidcache(&["verify", cache]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
        assert_check_cache_py_accepts(&o.out, &["--require-jsonschema"]);
    }
    let (a, b) = (read_rows(&plain.out), read_rows(&compact.out));
    assert_eq!(a.len(), b.len());
    let teacher = ModelDir::open(&fx.teacher)
        .unwrap()
        .load(DType::F32, &Device::Cpu)
        .unwrap();
    let (s, k) = (plain.seq_len, plain.top_k);
    let mut sampler = Sampler::default();
    let (mut ids, mut lps) = (vec![0u32; DRAWS], vec![0f32; DRAWS]);
    let mut distinct = 0usize;
    for (row, crow) in a.iter().zip(&b) {
        // The draws do not depend on the encoding; v5 keeps their log-probs to 1/32 nat.
        assert_eq!(row.draw_ids, crow.draw_ids, "seq {}", row.seq_ids[0]);
        for (a, b) in row.draw_logprobs.iter().zip(&crow.draw_logprobs) {
            let (a, b) = (a.to_f32(), b.to_f32());
            assert!((a - b).abs() <= 1.0 / 32.0 + a.abs() * 2e-3, "{a} vs {b}");
        }
        let input = Tensor::from_slice(&row.input_ids, (1, s), &Device::Cpu).unwrap();
        let logits: Vec<Vec<f32>> = teacher
            .forward(&input, Mode::Infer)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (p, x) in logits.iter().enumerate() {
            let topk = &row.topk_ids[p * k..(p + 1) * k];
            sampler.draw(
                x,
                topk,
                position_seed(row.seq_ids[0], p),
                &mut ids,
                &mut lps,
            );
            let got = &row.draw_ids[p * DRAWS..(p + 1) * DRAWS];
            assert_eq!(got, &ids[..], "seq {} position {p}", row.seq_ids[0]);
            for (j, lp) in row.draw_logprobs[p * DRAWS..(p + 1) * DRAWS]
                .iter()
                .enumerate()
            {
                assert!(
                    (lp.to_f32() - lps[j]).abs() <= lps[j].abs() * 1e-3 + 1e-4,
                    "seq {} position {p} draw {j}: {} vs {}",
                    row.seq_ids[0],
                    lp.to_f32(),
                    lps[j]
                );
            }
            let mut d = got.to_vec();
            d.dedup();
            distinct += d.len();
        }
    }
    // The teacher's tail is spread out: most draws are distinct ids.
    let positions = a.len() * s;
    assert!(
        distinct as f64 / positions as f64 > 4.0,
        "{distinct} distinct draws over {positions} positions"
    );
}

#[test]
fn draws_of_two_worker_processes_merged_equal_one_process() {
    let fx = Fixture::new(Architecture::Qwen2, 24);
    let single = options(&fx, "single", Encoding::Compact);
    precompute::run(&single, &mut Vec::new()).unwrap();
    let out = fx.path("workers");
    for w in 0..2 {
        let mut o = options(&fx, "workers", Encoding::Compact);
        (o.worker, o.workers) = (w, 2);
        // Another batch size: the draws depend on the position, not on the batch.
        o.batch_size = 2;
        precompute::run(&o, &mut Vec::new()).unwrap();
    }
    let rows = read_rows(&single.out);
    assert!(rows.len() >= 8, "{} rows", rows.len());
    assert_same_rows(&read_rows(&out), &rows);
}

#[test]
fn tail_sample_flags_that_cannot_work_are_refused_naming_the_flag() {
    let fx = Fixture::new(Architecture::Llama, 6);
    let mut steps = options(&fx, "steps", Encoding::Steps);
    steps.tail_samples = 4;
    let err = precompute::run(&steps, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--tail-samples") && err.contains("plain or compact"),
        "{err}"
    );
    let mut many = options(&fx, "many", Encoding::Plain);
    many.tail_samples = 5000;
    let err = precompute::run(&many, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--tail-samples") && err.contains("4096"),
        "{err}"
    );
    let mut dense = options(&fx, "dense", Encoding::Plain);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.teacher.join("config.json")).unwrap()).unwrap();
    dense.top_k = config["vocab_size"].as_u64().unwrap() as usize;
    let err = precompute::run(&dense, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--tail-samples") && err.contains("no tail"),
        "{err}"
    );
    // Resuming a cache with another --tail-samples is refused, naming the field.
    let first = options(&fx, "resume", Encoding::Plain);
    precompute::run(&first, &mut Vec::new()).unwrap();
    let mut other = first.clone();
    other.tail_samples = 4;
    let err = precompute::run(&other, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tail_draws") || err.contains("format_version"),
        "{err}"
    );
    for p in [&steps.out, &many.out, &dense.out] {
        assert!(!p.join("manifest.json").exists(), "{}", p.display());
    }
}

#[test]
fn distill_trains_on_sampled_tails_and_refuses_a_cache_without_draws() {
    let fx = Fixture::new(Architecture::Llama, 16);
    let with = options(&fx, "with", Encoding::Compact);
    precompute::run(&with, &mut Vec::new()).unwrap();
    let mut without = options(&fx, "without", Encoding::Compact);
    without.tail_samples = 0;
    precompute::run(&without, &mut Vec::new()).unwrap();
    let student = fx.student("student", 7);
    for objective in [
        distill::objectives::Objective::Taid,
        distill::objectives::Objective::Rkl,
    ] {
        let mut o = DistillOptions::new(&with.out, &student, fx.path(objective.name()));
        o.steps = Some(3);
        o.batch_size = 2;
        o.eval_fraction = 0.25;
        o.tail = TailMode::Sampled;
        o.objective = objective;
        o.progress = false;
        let summary = distill::run(&o, &mut Vec::new()).unwrap();
        let eval = summary.eval.expect("an eval split");
        assert!(
            eval.kl_teacher.is_finite() && eval.kl_teacher > 0.0 && eval.ce.is_finite(),
            "{objective:?}: {eval:?}"
        );
    }
    let mut o = DistillOptions::new(&without.out, &student, fx.path("refused"));
    o.steps = Some(1);
    o.tail = TailMode::Sampled;
    o.progress = false;
    let err = distill::run(&o, &mut Vec::new()).unwrap_err().to_string();
    assert!(
        err.contains("--tail") && err.contains("--tail-samples") && err.contains("has none"),
        "{err}"
    );
    assert!(!fx.path("refused").exists());
}
