//! The objectives against dense references, finite differences and their closed forms.

use super::*;
use crate::model::init::Normal;

const ALL: [Objective; 9] = Objective::ALL;
const TAILS: [TailMode; 3] = TailMode::ALL;

fn log_softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let l = m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    x.iter().map(|v| v - l).collect()
}

/// Positions of random student logits and a teacher's top-k records of random logits.
struct Case {
    vocab: usize,
    k: usize,
    s: Vec<f64>,
    /// dense teacher log-probs [n, vocab]
    z: Vec<f64>,
    ids: Vec<u32>,
    logprobs: Vec<f64>,
    tail: Vec<f64>,
    mask: Vec<bool>,
    labels: Vec<Option<u32>>,
}

impl Case {
    fn new(n: usize, vocab: usize, k: usize, seed: u64) -> Self {
        let mut rng = Normal::new(seed);
        let s: Vec<f64> = (0..n * vocab).map(|_| 1.5 * rng.sample() as f64).collect();
        let mut z = Vec::new();
        let (mut ids, mut logprobs, mut tail) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let row: Vec<f64> = (0..vocab).map(|_| 2.5 * rng.sample() as f64).collect();
            let row = log_softmax(&row);
            let mut order: Vec<u32> = (0..vocab as u32).collect();
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            let rest: Vec<f64> = order[k..].iter().map(|&i| row[i as usize]).collect();
            tail.push(if rest.is_empty() {
                f64::NEG_INFINITY
            } else {
                let m = rest.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                m + rest.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
            });
            logprobs.extend(order[..k].iter().map(|&i| row[i as usize]));
            ids.extend_from_slice(&order[..k]);
            z.extend(row);
        }
        let mut mask = vec![true; n];
        mask[n - 1] = false;
        let labels = (0..n)
            .map(|p| (p + 1 < n).then_some(((p * 7 + 3) % vocab) as u32))
            .collect();
        Self {
            vocab,
            k,
            s,
            z,
            ids,
            logprobs,
            tail,
            mask,
            labels,
        }
    }

    fn chunk<'a, T>(&'a self, s: &'a [T], lp: &'a [T], tail: &'a [T]) -> Chunk<'a, T> {
        Chunk {
            logits: s,
            vocab: self.vocab,
            k: self.k,
            ids: &self.ids,
            logprobs: lp,
            tail,
            mask: &self.mask,
            labels: &self.labels,
            draws: 0,
            draw_ids: &[],
            draw_logprobs: &[],
        }
    }

    /// The completed target of `shared/DESIGN.md` written out densely: log p over the vocabulary.
    fn dense_target(&self, p: usize, mode: TailMode, t: f64, s: &[f64]) -> Vec<f64> {
        let v = self.vocab;
        let ids = &self.ids[p * self.k..(p + 1) * self.k];
        let z = &self.z[p * v..(p + 1) * v];
        let in_k = |y: usize| ids.contains(&(y as u32));
        let tau = self.tail[p];
        let tail: Vec<f64> = (0..v).filter(|&y| !in_k(y)).map(|y| s[y]).collect();
        let l_tail = if tail.is_empty() {
            f64::NEG_INFINITY
        } else {
            log_softmax_lse(&tail)
        };
        let zhat: Vec<f64> = (0..v)
            .map(|y| {
                if in_k(y) {
                    z[y]
                } else {
                    match mode {
                        TailMode::Student => tau + s[y] - l_tail,
                        TailMode::Uniform => tau - ((v - self.k) as f64).ln(),
                        TailMode::Renorm | TailMode::Sampled => f64::NEG_INFINITY,
                    }
                }
            })
            .collect();
        let mix: Vec<f64> = (0..v)
            .map(|y| {
                if zhat[y] == f64::NEG_INFINITY {
                    zhat[y]
                } else {
                    (1.0 - t) * s[y] + t * zhat[y]
                }
            })
            .collect();
        log_softmax(&mix)
    }
}

fn log_softmax_lse(x: &[f64]) -> f64 {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// The objectives written densely in probabilities, independently of `element`.
fn dense_loss(
    obj: Objective,
    lambda: f64,
    w: f64,
    lp: &[f64],
    s: &[f64],
    label: Option<u32>,
) -> f64 {
    let lq = log_softmax(s);
    let ce = label.map_or(0.0, |y| -lq[y as usize]);
    let p: Vec<f64> = lp.iter().map(|x| x.exp()).collect();
    let q: Vec<f64> = lq.iter().map(|x| x.exp()).collect();
    let kl = |a: &[f64], b: &[f64]| -> f64 {
        a.iter()
            .zip(b)
            .filter(|(x, _)| **x > 0.0)
            .map(|(x, y)| x * (x / y).ln())
            .sum()
    };
    let mix = |a: &[f64], b: &[f64], l: f64| -> Vec<f64> {
        a.iter()
            .zip(b)
            .map(|(x, y)| l * x + (1.0 - l) * y)
            .collect()
    };
    let j = match obj {
        Objective::Taid | Objective::TaidLinear | Objective::Kl => kl(&p, &q),
        Objective::Rkl => kl(&q, &p),
        Objective::Tvd => 0.5 * p.iter().zip(&q).map(|(a, b)| (a - b).abs()).sum::<f64>(),
        Objective::SkewKl => kl(&p, &mix(&p, &q, lambda)),
        Objective::SkewRkl => kl(&q, &mix(&q, &p, lambda)),
        Objective::Gjs => {
            let m = mix(&p, &q, lambda);
            lambda * kl(&p, &m) + (1.0 - lambda) * kl(&q, &m)
        }
        Objective::Ce => return ce,
    };
    j + w * ce
}

fn valid(obj: Objective, tail: TailMode) -> bool {
    !(obj == Objective::Rkl && tail == TailMode::Renorm)
}

/// Loss, metrics and gradient of every objective and tail mode against the dense
/// completion, the gradient against central finite differences of the dense loss with the
/// target held fixed (the stop-gradient), all in f64.
#[test]
fn every_objective_matches_its_dense_form_and_finite_differences() {
    let c = Case::new(4, 40, 6, 11);
    let v = c.vocab;
    let mut worst_grad = 0f64;
    for obj in ALL {
        for tail in TAILS {
            if !valid(obj, tail) {
                continue;
            }
            let cfg = LossConfig {
                objective: obj,
                tail,
                t: 0.35,
                lambda: 0.1,
                ce_weight: if obj == Objective::Ce { 0.0 } else { 0.3 },
            };
            let mut grad = vec![0f64; c.s.len()];
            let out = loss_and_grad(&cfg, &c.chunk(&c.s, &c.logprobs, &c.tail), &mut grad);
            let (mut loss, mut kl, mut ce, mut xent) = (0.0, 0.0, 0.0, 0.0);
            for p in 0..c.mask.len() {
                let s = &c.s[p * v..(p + 1) * v];
                if !c.mask[p] {
                    assert!(
                        grad[p * v..(p + 1) * v].iter().all(|&g| g == 0.0),
                        "masked position has a gradient"
                    );
                    continue;
                }
                let t = if obj.is_taid() { cfg.t as f64 } else { 1.0 };
                let target = c.dense_target(p, tail, t, s);
                let teacher = c.dense_target(p, tail, 1.0, s);
                let w = cfg.ce_weight as f64;
                let lambda = cfg.lambda as f64;
                loss += dense_loss(obj, lambda, w, &target, s, c.labels[p]);
                kl += dense_loss(Objective::Kl, 0.1, 0.0, &teacher, s, None);
                ce += c.labels[p].map_or(0.0, |y| -log_softmax(s)[y as usize]);
                let src = if obj == Objective::Ce {
                    &teacher
                } else {
                    &target
                };
                let lq = log_softmax(s);
                xent -= src
                    .iter()
                    .zip(&lq)
                    .filter(|(a, _)| a.is_finite())
                    .map(|(a, b)| a.exp() * b)
                    .sum::<f64>();
                let h = 1e-5;
                for i in 0..v {
                    let (mut up, mut down) = (s.to_vec(), s.to_vec());
                    up[i] += h;
                    down[i] -= h;
                    let fd = (dense_loss(obj, lambda, w, &target, &up, c.labels[p])
                        - dense_loss(obj, lambda, w, &target, &down, c.labels[p]))
                        / (2.0 * h);
                    let g = grad[p * v + i];
                    worst_grad = worst_grad.max((g - fd).abs());
                    assert!((g - fd).abs() < 1e-7, "{obj:?}/{tail:?} position {p} id {i}: gradient {g} vs finite difference {fd}");
                }
            }
            assert!(
                (out.loss_sum - loss).abs() < 1e-10,
                "{obj:?}/{tail:?}: loss {} vs dense {loss}",
                out.loss_sum
            );
            assert!(
                (out.kl_sum - kl).abs() < 1e-10,
                "{obj:?}/{tail:?}: kl {} vs dense {kl}",
                out.kl_sum
            );
            assert!(
                (out.ce_sum - ce).abs() < 1e-10,
                "{obj:?}/{tail:?}: ce {} vs dense {ce}",
                out.ce_sum
            );
            if obj != Objective::Ce {
                assert!(
                    (out.target_xent_sum - xent).abs() < 1e-10,
                    "{obj:?}/{tail:?}: xent {} vs {xent}",
                    out.target_xent_sum
                );
            }
            assert_eq!((out.positions, out.ce_positions), (3, 3));
            let only = loss_only(&cfg, &c.chunk(&c.s, &c.logprobs, &c.tail));
            assert_eq!(only, out, "loss_only and loss_and_grad disagree");
        }
    }
    eprintln!("worst |gradient − finite difference| = {worst_grad:.2e}");
}

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

#[test]
fn sparse_taid_equals_dense_when_k_is_vocab() {
    let (n, vocab) = (6, 512);
    let c = Case::new(n, vocab, vocab, 3);
    let (s, lp, tail) = (f32s(&c.s), f32s(&c.logprobs), f32s(&c.tail));
    assert!(tail.iter().all(|t| *t == f32::NEG_INFINITY));
    let mut worst = (0f64, 0f64);
    for mode in TAILS {
        for t in [0.0f32, 0.4, 0.77, 1.0] {
            let cfg = LossConfig {
                objective: Objective::Taid,
                tail: mode,
                t,
                lambda: 0.1,
                ce_weight: 0.0,
            };
            let mut grad = vec![0f32; s.len()];
            let out = loss_and_grad(&cfg, &c.chunk(&s, &lp, &tail), &mut grad);
            let mut dense_sum = 0.0;
            for p in 0..n {
                if !c.mask[p] {
                    continue;
                }
                // Dense TAID (Eq. 1–2): p_t = softmax((1−t)·s + t·z), J = KL(p_t ‖ q), ∇ = q − p_t.
                let sp: Vec<f64> = s[p * vocab..(p + 1) * vocab]
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let z: Vec<f64> = (0..vocab)
                    .map(|y| {
                        let j = c.ids[p * vocab..(p + 1) * vocab]
                            .iter()
                            .position(|&i| i as usize == y)
                            .unwrap();
                        lp[p * vocab + j] as f64
                    })
                    .collect();
                let t = t as f64;
                let mixed: Vec<f64> = sp
                    .iter()
                    .zip(&z)
                    .map(|(a, b)| (1.0 - t) * a + t * b)
                    .collect();
                let lpt = log_softmax(&mixed);
                let lq = log_softmax(&sp);
                let j: f64 = lpt.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
                dense_sum += j;
                for y in 0..vocab {
                    let dg = lq[y].exp() - lpt[y].exp();
                    let e = (grad[p * vocab + y] as f64 - dg).abs();
                    worst.1 = worst.1.max(e);
                    assert!(
                        e < 1e-5,
                        "{mode:?} t={t} position {p} id {y}: gradient {} vs dense {dg}",
                        grad[p * vocab + y]
                    );
                }
            }
            let e = (out.loss_sum - dense_sum).abs() / (n - 1) as f64;
            worst.0 = worst.0.max(e);
            assert!(
                e < 1e-5,
                "{mode:?} t={t}: mean loss {} vs dense {}",
                out.loss_sum,
                dense_sum
            );
        }
    }
    eprintln!(
        "k = V: worst |Δloss| {:.2e}, worst |Δgrad| {:.2e}",
        worst.0, worst.1
    );
}

#[test]
fn closed_form_forward_kl_equals_the_generic_path() {
    let c = Case::new(5, 3000, 50, 5);
    let (s, lp, tail) = (f32s(&c.s), f32s(&c.logprobs), f32s(&c.tail));
    for obj in [Objective::Taid, Objective::Kl] {
        for mode in [TailMode::Student, TailMode::Renorm] {
            let cfg = LossConfig {
                objective: obj,
                tail: mode,
                t: 0.6,
                lambda: 0.1,
                ce_weight: 0.25,
            };
            let chunk = c.chunk(&s, &lp, &tail);
            let (mut g1, mut g2) = (vec![0f32; s.len()], vec![0f32; s.len()]);
            let a = run_chunk(&cfg, &chunk, Some(&mut g1), true);
            let b = run_chunk(&cfg, &chunk, Some(&mut g2), false);
            for (x, y, what) in [
                (a.loss_sum, b.loss_sum, "loss"),
                (a.target_xent_sum, b.target_xent_sum, "xent"),
                (a.kl_sum, b.kl_sum, "kl"),
            ] {
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                    "{obj:?}/{mode:?} {what}: fast {x} vs generic {y}"
                );
            }
            let worst = g1
                .iter()
                .zip(&g2)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-6,
                "{obj:?}/{mode:?}: gradients differ by {worst}"
            );
        }
    }
}

#[test]
fn impossible_settings_are_refused_naming_the_flag() {
    let base = LossConfig {
        objective: Objective::Rkl,
        tail: TailMode::Renorm,
        t: 0.4,
        lambda: 0.1,
        ce_weight: 0.0,
    };
    assert!(base.validate().unwrap_err().contains("--tail renorm"));
    let skew = LossConfig {
        objective: Objective::SkewKl,
        tail: TailMode::Student,
        lambda: 1.5,
        ..base
    };
    assert!(skew.validate().unwrap_err().contains("--lambda"));
    let ce = LossConfig {
        objective: Objective::Ce,
        ce_weight: 1.0,
        ..skew
    };
    assert!(ce.validate().unwrap_err().contains("--ce-weight"));
    let ok = LossConfig {
        objective: Objective::Taid,
        tail: TailMode::Student,
        ..base
    };
    assert_eq!(ok.validate(), Ok(()));
}
