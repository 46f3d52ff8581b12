//! The device path against the host path: chunk by chunk, then 20 optimizer steps of a student
//! for every objective and tail; and the traffic of a step.

use candle_core::{Device, Tensor};

use super::traffic::Traffic;
use super::*;
use crate::distill::loader::{Batch, Cursor};
use crate::distill::objectives::{self, Chunk, LossConfig, Objective};
use crate::distill::options::DistillOptions;
use crate::distill::targets::TailMode;
use crate::distill::trainer::Trainer;
use crate::model::config::Architecture;
use crate::model::init::{Normal, TinySpec};
use crate::model::train::Student;
use crate::model::Mode;

fn valid(obj: Objective, tail: TailMode) -> bool {
    !(obj == Objective::Rkl && tail == TailMode::Renorm)
}

/// `|a − b| ≤ 1e-5·max(|a|, |b|, floor)`.
fn close(a: f64, b: f64, floor: f64) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(floor)
}

#[test]
fn the_step_path_comes_from_the_environment_variable_or_the_device() {
    assert_eq!(
        StepPath::choose(None, &Device::Cpu).unwrap(),
        StepPath::Host
    );
    assert_eq!(
        StepPath::choose(Some(""), &Device::Cpu).unwrap(),
        StepPath::Host
    );
    assert_eq!(
        StepPath::choose(Some("device"), &Device::Cpu).unwrap(),
        StepPath::Device
    );
    assert_eq!(
        StepPath::choose(Some("host"), &Device::Cpu).unwrap(),
        StepPath::Host
    );
    let err = StepPath::choose(Some("gpu"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(STEP_PATH_ENV) && err.contains("`gpu`"),
        "{err}"
    );
}

/// A chunk of `n` positions at `vocab`: student logits, a teacher's top-k records of random
/// logits, one masked position, two without a label, one whose top-k held all the mass.
struct Case {
    n: usize,
    vocab: usize,
    k: usize,
    logits: Vec<f32>,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    tail: Vec<f32>,
    mask: Vec<bool>,
    labels: Vec<Option<u32>>,
}

impl Case {
    /// `full_top_k`: give position 3 a top-k that held all the mass (−∞ tail), which makes the
    /// reverse KL infinite there.
    fn new(n: usize, vocab: usize, k: usize, seed: u64, full_top_k: bool) -> Self {
        let mut rng = Normal::new(seed);
        let logits: Vec<f32> = (0..n * vocab).map(|_| 1.5 * rng.sample()).collect();
        let (mut ids, mut logprobs, mut tail) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let z: Vec<f64> = (0..vocab).map(|_| 2.5 * rng.sample() as f64).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            let mut order: Vec<u32> = (0..vocab as u32).collect();
            order.sort_by(|&a, &b| z[b as usize].total_cmp(&z[a as usize]));
            let rest: f64 = order[k..].iter().map(|&i| (z[i as usize] - l).exp()).sum();
            tail.push(rest.ln() as f32);
            logprobs.extend(order[..k].iter().map(|&i| (z[i as usize] - l) as f32));
            ids.extend_from_slice(&order[..k]);
        }
        if full_top_k {
            tail[3] = f32::NEG_INFINITY;
        }
        let mut mask = vec![true; n];
        mask[n - 1] = false;
        let labels = (0..n)
            .map(|p| (p + 2 < n && p != 5).then_some(((p * 7 + 3) % vocab) as u32))
            .collect();
        Self {
            n,
            vocab,
            k,
            logits,
            ids,
            logprobs,
            tail,
            mask,
            labels,
        }
    }

    fn host(&self) -> Chunk<'_> {
        Chunk {
            logits: &self.logits,
            vocab: self.vocab,
            k: self.k,
            ids: &self.ids,
            logprobs: &self.logprobs,
            tail: &self.tail,
            mask: &self.mask,
            labels: &self.labels,
            draws: 0,
            draw_ids: &[],
            draw_logprobs: &[],
        }
    }

    fn device(&self) -> DeviceChunk {
        let d = &Device::Cpu;
        let (n, k) = (self.n, self.k);
        let u8s = |v: Vec<u8>| Tensor::from_vec(v, (n, 1), d).unwrap();
        DeviceChunk {
            ids: Tensor::from_slice(&self.ids, (n, k), d).unwrap(),
            logprobs: Tensor::from_slice(&self.logprobs, (n, k), d).unwrap(),
            tail: Tensor::from_slice(&self.tail, (n, 1), d).unwrap(),
            mask: u8s(self.mask.iter().map(|&m| m as u8).collect()),
            labels: Tensor::from_vec(
                self.labels
                    .iter()
                    .map(|l| l.unwrap_or(0))
                    .collect::<Vec<u32>>(),
                (n, 1),
                d,
            )
            .unwrap(),
            has_label: u8s(self.labels.iter().map(|l| l.is_some() as u8).collect()),
        }
    }
}

#[test]
fn device_chunk_loss_and_gradient_equal_the_host_path_for_every_objective_tail_and_t() {
    let cases = [
        Case::new(24, 300, 12, 7, true),
        Case::new(24, 300, 12, 7, false),
    ];
    let mut checked = 0;
    for objective in Objective::ALL {
        let case = &cases[(objective == Objective::Rkl) as usize];
        let logits = Tensor::from_slice(&case.logits, (case.n, case.vocab), &Device::Cpu).unwrap();
        let chunk = case.device();
        for tail in TailMode::ALL {
            if !valid(objective, tail) {
                continue;
            }
            for (t, ce_weight) in [(0.35f32, 0.0f32), (1.0, 0.0), (0.6, 0.3)] {
                if objective == Objective::Ce && ce_weight > 0.0 {
                    continue;
                }
                let cfg = LossConfig {
                    objective,
                    tail,
                    t,
                    lambda: 0.3,
                    ce_weight,
                };
                let what = format!("{objective:?} {tail:?} t={t} w={ce_weight}");
                let mut host_grad = vec![0f32; case.n * case.vocab];
                let host = objectives::loss_and_grad(&cfg, &case.host(), &mut host_grad);
                let (sums, grad) = loss::chunk(&cfg, &logits, &chunk, Some(1.0)).unwrap();
                let sums: Vec<f64> = sums.to_vec1().unwrap();
                let want = [
                    host.loss_sum,
                    host.target_xent_sum,
                    host.ce_sum,
                    host.kl_sum,
                ];
                for (name, (d, h)) in ["loss", "xent", "ce", "kl"]
                    .iter()
                    .zip(sums.iter().zip(want))
                {
                    assert!(close(*d, h, 1e-3), "{what}: {name} device {d} host {h}");
                }
                let grad: Vec<f32> = grad.unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let scale = host_grad.iter().fold(0f32, |m, g| m.max(g.abs())) as f64;
                for (i, (d, h)) in grad.iter().zip(&host_grad).enumerate() {
                    assert!(
                        (*d as f64 - *h as f64).abs() <= 1e-5 * scale,
                        "{what}: gradient {i} (position {}) device {d} host {h}",
                        i / case.vocab
                    );
                }
                // Masked positions get no gradient.
                assert!(grad[(case.n - 1) * case.vocab..].iter().all(|&g| g == 0.0));
                checked += 1;
            }
        }
    }
    assert_eq!(checked, (8 * 3 - 1) * 3 + 3 * 2, "cases checked");
}

/// A tiny random student, and the micro-batches of 20 steps (2 sequences of 16 tokens, top-8
/// of a vocabulary of 256, a few positions masked).
fn setup(seed: u64) -> (tempfile::TempDir, Vec<Vec<Batch>>) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TinySpec::new(Architecture::Llama, 256);
    spec.tie_word_embeddings = false;
    spec.write_config(dir.path()).unwrap();
    let steps = (0..20)
        .map(|s| {
            let mut data = crate::testing::llm_like_batch(2, 16, 8, 256, seed + s);
            data.loss_mask[5] = false;
            data.loss_mask[20] = false;
            vec![Batch {
                data,
                cursor: Cursor::default(),
            }]
        })
        .collect();
    (dir, steps)
}

/// The student runs candle's ops ([`Mode::TrainReference`]), as it does on a GPU: both step
/// paths share its forward and backward, and the property here is the head's two paths. Adam's
/// first steps move a weight by about `lr · g / (|g| + ε)`, so a gradient element near zero
/// turns rounding-level differences into weight differences of 1e-5 after 20 steps, whichever
/// kernels the shared student uses (worst here: 9.3e-6 with candle's, 1.35e-5 with the fused
/// CPU ops).
fn trainer(dir: &std::path::Path, opts: &DistillOptions, path: StepPath) -> Trainer {
    let mut student = Student::from_dir(dir, 3, &Device::Cpu).unwrap();
    student.train_kernels = Mode::TrainReference;
    Trainer::with_step_path(student, opts, 20, path).unwrap()
}

fn weights(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    t.student()
        .params
        .iter()
        .map(|(n, v)| (n.clone(), v.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

#[test]
fn twenty_device_steps_equal_twenty_host_steps_for_every_objective_and_tail() {
    let (dir, steps) = setup(11);
    let mut runs = 0;
    for objective in Objective::ALL {
        for tail in TailMode::ALL {
            // `ce` ignores the tail: one run.
            if !valid(objective, tail) || (objective == Objective::Ce && tail != TailMode::Student)
            {
                continue;
            }
            let opts = DistillOptions {
                objective,
                tail,
                lr: 3e-3,
                warmup: 2,
                max_grad_norm: 0.5,
                ce_weight: if objective == Objective::Kl { 0.2 } else { 0.0 },
                ..DistillOptions::default()
            };
            let what = format!("{objective:?} {tail:?}");
            let mut host = trainer(dir.path(), &opts, StepPath::Host);
            let mut device = trainer(dir.path(), &opts, StepPath::Device);
            assert_eq!(device.step_path(), StepPath::Device);
            for (i, micro) in steps.iter().enumerate() {
                let h = host.step(micro).unwrap();
                let d = device.step(micro).unwrap();
                assert!(
                    close(d.loss, h.loss, 1e-6),
                    "{what} step {}: loss device {} host {}",
                    i + 1,
                    d.loss,
                    h.loss
                );
                assert!(
                    close(d.grad_norm, h.grad_norm, 1e-6),
                    "{what} step {}",
                    i + 1
                );
                assert!(
                    close(d.stats.kl(), h.stats.kl(), 1e-6),
                    "{what} step {}",
                    i + 1
                );
                assert!(
                    close(d.stats.ce(), h.stats.ce(), 1e-6),
                    "{what} step {}",
                    i + 1
                );
                assert_eq!(d.t.to_bits(), h.t.to_bits(), "{what} step {}: t", i + 1);
            }
            for ((name, h), (_, d)) in weights(&host).iter().zip(weights(&device)) {
                let worst = h
                    .iter()
                    .zip(&d)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst <= 1e-5,
                    "{what}: {name} differs by {worst} after 20 steps"
                );
            }
            runs += 1;
        }
    }
    assert_eq!(runs, 8 * 3 - 1 + 1);
}

#[test]
fn a_device_step_reads_back_only_scalars_while_a_host_step_reads_the_logits() {
    let (dir, steps) = setup(5);
    let opts = DistillOptions::default();
    let micro = &steps[0];
    let data = &micro[0].data;
    let logits_bytes = (data.rows() * data.seq_len * 256 * 4) as u64;
    let batch_bytes = (data.input_ids.len() * 4
        + data.topk_ids.len() * 4
        + data.topk_logprobs.len() * 4
        + data.tail_logmass.len() * 4
        + data.loss_mask.len() * (1 + 4 + 1)) as u64;

    let mut device = trainer(dir.path(), &opts, StepPath::Device);
    let before = Traffic::now();
    device.step(micro).unwrap();
    let moved = Traffic::since(before);
    // Four f64 loss sums and one f64 gradient norm.
    assert_eq!(moved.to_host, 5 * 8, "device step: {moved:?}");
    assert_eq!(moved.to_device, batch_bytes, "device step: {moved:?}");
    assert!(moved.to_host * 100 <= logits_bytes);

    let mut host = trainer(dir.path(), &opts, StepPath::Host);
    let before = Traffic::now();
    host.step(micro).unwrap();
    let moved = Traffic::since(before);
    assert!(
        moved.to_host >= logits_bytes,
        "the host path reads every logit: {moved:?}, logits {logits_bytes} bytes"
    );
}

#[test]
fn a_checkpoint_of_the_device_path_resumes_on_the_host_path_and_back() {
    let (dir, steps) = setup(21);
    let opts = DistillOptions {
        objective: Objective::Taid,
        lr: 3e-3,
        ..DistillOptions::default()
    };
    let run = tempfile::tempdir().unwrap();
    for (first, then) in [
        (StepPath::Device, StepPath::Host),
        (StepPath::Host, StepPath::Device),
    ] {
        let mut a = trainer(dir.path(), &opts, first);
        for micro in &steps[..4] {
            a.step(micro).unwrap();
        }
        let ckpt = a.checkpoint(run.path(), None).unwrap();
        let mut student = Student::from_dir(&ckpt, 3, &Device::Cpu).unwrap();
        student.train_kernels = Mode::TrainReference;
        let mut b = Trainer::with_step_path(student, &opts, 20, then).unwrap();
        b.resume(&ckpt).unwrap();
        for (i, micro) in steps[4..8].iter().enumerate() {
            let (x, y) = (a.step(micro).unwrap(), b.step(micro).unwrap());
            assert!(
                close(x.loss, y.loss, 1e-6) && x.t.to_bits() == y.t.to_bits(),
                "{first:?} → {then:?}, step {}: loss {} vs {}",
                i + 5,
                x.loss,
                y.loss
            );
        }
        std::fs::remove_dir_all(run.path().join("checkpoints")).unwrap();
    }
}

#[test]
fn recomputing_the_layers_in_the_backward_gives_the_same_steps_on_both_paths() {
    let (dir, steps) = setup(31);
    for path in [StepPath::Host, StepPath::Device] {
        let opts = DistillOptions {
            lr: 3e-3,
            ..DistillOptions::default()
        };
        let recompute = DistillOptions {
            recompute: true,
            ..opts.clone()
        };
        let mut kept = trainer(dir.path(), &opts, path);
        let mut again = trainer(dir.path(), &recompute, path);
        for (i, micro) in steps.iter().enumerate() {
            let (a, b) = (kept.step(micro).unwrap(), again.step(micro).unwrap());
            assert!(
                close(a.loss, b.loss, 1e-6) && close(a.grad_norm, b.grad_norm, 1e-6),
                "{path:?} step {}: loss {} vs {}, gradient norm {} vs {}",
                i + 1,
                a.loss,
                b.loss,
                a.grad_norm,
                b.grad_norm
            );
        }
        for ((name, a), (_, b)) in weights(&kept).iter().zip(weights(&again)) {
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-6,
                "{path:?}: {name} differs by {worst} after 20 steps"
            );
        }
    }
}
