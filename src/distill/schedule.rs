//! Schedules: TAID's interpolation parameter `t` (paper Algorithm 1) and the learning rate
//! (linear warmup, then cosine decay).
//!
//! Both are plain state machines with no tensors, so a checkpoint stores them as JSON and a
//! resumed run continues bit for bit.

use serde::{Deserialize, Serialize};

/// ε of Algorithm 1: keeps `δ` finite when the previous loss is 0.
const EPS: f64 = 1e-15;

/// TAID's adaptive interpolation parameter.
///
/// `t_1 = t_start`, `m_0 = 0`, `J_0 = +∞`. After optimizer step `n` with loss `J_n`:
/// `δ = (J_{n−1} − J_n)/(J_{n−1} + ε)` (skipped on step 1, where `J_0 = ∞` would give ∞/∞),
/// `m ← β·m + (1−β)·δ`, `t ← min(t_end, max(t_lin(n), t + α·sigmoid(m)·(1−t)))` with
/// `t_lin(n) = t_start + (t_end − t_start)·n/N`. Without `adaptive` (the `taid-linear`
/// ablation and the baselines) `t = min(t_end, t_lin(n))`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaidSchedule {
    pub t_start: f64,
    pub t_end: f64,
    pub alpha: f64,
    pub beta: f64,
    pub total_steps: u64,
    pub adaptive: bool,
    /// The value the next step trains with.
    t: f64,
    /// The momentum of the relative loss change.
    m: f64,
    /// The previous step's loss; `None` before the first update (Algorithm 1's `J_0 = ∞`).
    prev_loss: Option<f64>,
    /// Updates applied so far (the `n` of the last update).
    steps: u64,
}

impl TaidSchedule {
    pub fn new(
        t_start: f64,
        t_end: f64,
        alpha: f64,
        beta: f64,
        total_steps: u64,
        adaptive: bool,
    ) -> Self {
        Self {
            t_start,
            t_end,
            alpha,
            beta,
            total_steps: total_steps.max(1),
            adaptive,
            t: t_start,
            m: 0.0,
            prev_loss: None,
            steps: 0,
        }
    }

    /// The interpolation parameter of the next optimizer step.
    pub fn t(&self) -> f64 {
        self.t
    }

    /// The momentum `m` of Algorithm 1.
    pub fn momentum(&self) -> f64 {
        self.m
    }

    /// The linear lower bound after `n` steps.
    pub fn t_linear(&self, n: u64) -> f64 {
        self.t_start + (self.t_end - self.t_start) * (n as f64 / self.total_steps as f64)
    }

    /// Advance after one optimizer step whose (token-weighted mean) loss was `loss`.
    /// Never call it during evaluation.
    pub fn update(&mut self, loss: f64) {
        self.steps += 1;
        let t_lin = self.t_linear(self.steps);
        if !self.adaptive {
            self.t = t_lin.min(self.t_end);
            return;
        }
        if let Some(prev) = self.prev_loss {
            let delta = (prev - loss) / (prev + EPS);
            self.m = self.beta * self.m + (1.0 - self.beta) * delta;
        }
        self.prev_loss = Some(loss);
        let sigmoid = 1.0 / (1.0 + (-self.m).exp());
        let stepped = self.t + self.alpha * sigmoid * (1.0 - self.t);
        self.t = self.t_end.min(t_lin.max(stepped));
    }
}

/// Linear warmup from 0 to `base_lr` over `warmup_steps`, then cosine decay to
/// `base_lr · min_lr_ratio` at `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.base_lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Algorithm 1 written out step by step, the reference the schedule must match.
    fn reference(losses: &[f64], t_start: f64, alpha: f64, beta: f64, n_total: u64) -> Vec<f64> {
        let (mut t, mut m, mut prev) = (t_start, 0.0f64, f64::INFINITY);
        let mut out = vec![];
        for (i, &j) in losses.iter().enumerate() {
            let n = (i + 1) as f64;
            let t_lin = t_start + (1.0 - t_start) * n / n_total as f64;
            if prev.is_finite() {
                m = beta * m + (1.0 - beta) * (prev - j) / (prev + 1e-15);
            }
            prev = j;
            t = 1f64.min(t_lin.max(t + alpha * (1.0 / (1.0 + (-m).exp())) * (1.0 - t)));
            out.push(t);
        }
        out
    }

    #[test]
    fn adaptive_t_follows_algorithm_1() {
        let losses: Vec<f64> = (0..50)
            .map(|i| 3.0 * (-(i as f64) / 10.0).exp() + 0.1 * (i % 3) as f64)
            .collect();
        let mut s = TaidSchedule::new(0.4, 1.0, 5e-2, 0.9, 200, true);
        let want = reference(&losses, 0.4, 5e-2, 0.9, 200);
        for (j, w) in losses.iter().zip(want) {
            s.update(*j);
            assert!((s.t() - w).abs() < 1e-15, "t {} vs {}", s.t(), w);
        }
        assert!(
            s.t() > s.t_linear(50),
            "a falling loss moves t faster than linear"
        );
    }

    #[test]
    fn t_is_bounded_by_linear_floor_and_t_end() {
        let mut s = TaidSchedule::new(0.2, 0.9, 0.5, 0.99, 10, true);
        for n in 1..=20 {
            s.update(1.0 + n as f64); // a rising loss: m < 0, t still never below t_lin
            assert!(s.t() >= s.t_linear(n).min(0.9) - 1e-15);
            assert!(s.t() <= 0.9);
        }
        assert_eq!(s.t(), 0.9);
    }

    #[test]
    fn linear_schedule_ignores_the_loss() {
        let mut s = TaidSchedule::new(0.4, 1.0, 5e-4, 0.99, 4, false);
        for (n, loss) in [(1, 5.0), (2, 1.0), (3, 9.0), (4, 0.0)] {
            s.update(loss);
            assert!((s.t() - (0.4 + 0.6 * n as f64 / 4.0)).abs() < 1e-15);
        }
    }

    #[test]
    fn schedule_survives_a_json_round_trip() {
        let mut s = TaidSchedule::new(0.4, 1.0, 5e-4, 0.99, 100, true);
        for j in [3.0, 2.5, 2.7] {
            s.update(j);
        }
        let back: TaidSchedule = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn lr_warms_up_linearly_then_decays_by_cosine() {
        let lr = LrSchedule {
            base_lr: 1e-3,
            warmup_steps: 10,
            total_steps: 110,
            min_lr_ratio: 0.1,
        };
        assert!((lr.lr(0) - 1e-4).abs() < 1e-15);
        assert!((lr.lr(9) - 1e-3).abs() < 1e-15);
        assert!((lr.lr(10) - 1e-3).abs() < 1e-15);
        assert!((lr.lr(60) - 1e-3 * (0.1 + 0.9 * 0.5)).abs() < 1e-12);
        assert!((lr.lr(110) - 1e-4).abs() < 1e-15);
        let values: Vec<f64> = (10..=110).map(|s| lr.lr(s)).collect();
        assert!(
            values.windows(2).all(|w| w[1] <= w[0]),
            "cosine decay never rises"
        );
    }
}
