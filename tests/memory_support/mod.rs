//! Shared by `tests/loss_memory.rs` and `benches/memory.rs` (included with `#[path]`): a counting
//! global allocator, synthetic loss inputs, and the two loss-memory measurements.
//!
//! - [`loss_and_grad_peak`]: `objectives::loss_and_grad` over N positions as one call, after the
//!   inputs and the `[N, vocab]` gradient buffer are allocated: the loss's own working memory.
//! - [`micro_batch_peak`]: `trainer::micro_batch` (the function `distill` calls per micro-batch,
//!   which slices the positions into chunks of `LOSS_CHUNK_BYTES` of logits), after the batch is
//!   in memory: everything a training micro-batch allocates, with the student's own
//!   forward/backward measured separately ([`model_peak`]) so that its share can be told apart.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use candle_core::{Device, Tensor};
use taidcache::cache::ShardBatch;
use taidcache::distill::objectives::{self, Chunk, LossConfig, Objective};
use taidcache::distill::targets::TailMode;
use taidcache::distill::trainer;
use taidcache::model::train::Student;
use taidcache::model::{Architecture, Mode};
use taidcache::testing::{Normal, TinySpec};

/// `System`, counting the bytes currently allocated and their high-water mark.
pub struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

fn shrink(n: usize) {
    CURRENT.fetch_sub(n, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size > layout.size() {
                grow(new_size - layout.size());
            } else {
                shrink(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated right now (all threads).
pub fn allocated() -> usize {
    CURRENT.load(Relaxed)
}

/// Run `f`; return its result and the peak of allocated bytes during it above the level at its
/// start (what `f` needed on top of what already existed, its retained outputs included).
pub fn peak_extra<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let r = f();
    (r, PEAK.load(Relaxed).saturating_sub(base))
}

pub const MIB: usize = 1 << 20;

pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}

/// Distinct ids of position `p`'s top-k: a stride walk through the vocabulary.
fn topk_ids(p: usize, k: usize, vocab: usize, out: &mut Vec<u32>) {
    let stride = vocab / k;
    let base = (p.wrapping_mul(7919) + 13) % stride;
    out.extend((0..k).map(|j| (base + j * stride) as u32));
}

/// Descending teacher log-probs of k ids holding 90% of the mass, and the tail's log-mass.
fn topk_logprobs(k: usize) -> (Vec<f32>, f32) {
    let w: Vec<f64> = (0..k).map(|j| (-0.15 * j as f64).exp()).collect();
    let z: f64 = w.iter().sum();
    let lp = w.iter().map(|x| (0.9 * x / z).ln() as f32).collect();
    (lp, 0.1f64.ln() as f32)
}

/// Synthetic inputs of one `loss_and_grad` call over `n` positions.
pub struct LossInputs {
    pub vocab: usize,
    pub k: usize,
    pub logits: Vec<f32>,
    pub ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub tail: Vec<f32>,
    pub mask: Vec<bool>,
    pub labels: Vec<Option<u32>>,
}

impl LossInputs {
    pub fn new(n: usize, vocab: usize, k: usize, seed: u64) -> Self {
        let mut rng = Normal::new(seed);
        let logits = (0..n * vocab)
            .map(|_| (8.0 * rng.uniform() - 4.0) as f32)
            .collect();
        let mut ids = Vec::with_capacity(n * k);
        for p in 0..n {
            topk_ids(p, k, vocab, &mut ids);
        }
        let (lp, tail) = topk_logprobs(k);
        Self {
            vocab,
            k,
            logits,
            ids,
            logprobs: lp.repeat(n),
            tail: vec![tail; n],
            // One masked position in 16, one unlabeled in 8: both branches run.
            mask: (0..n).map(|p| p % 16 != 15).collect(),
            labels: (0..n)
                .map(|p| (p % 8 != 7).then_some(((p * 31) % vocab) as u32))
                .collect(),
        }
    }

    pub fn chunk(&self) -> Chunk<'_, f32> {
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
}

pub const ALL_OBJECTIVES: [Objective; 9] = Objective::ALL;

pub const ALL_TAILS: [TailMode; 3] = TailMode::ALL;

/// A loss setting every objective accepts (None for rkl with the renorm tail, which is refused).
pub fn loss_config(objective: Objective, tail: TailMode) -> Option<LossConfig> {
    let cfg = LossConfig {
        objective,
        tail,
        t: 0.4,
        lambda: 0.1,
        ce_weight: if objective == Objective::Ce { 0.0 } else { 0.1 },
    };
    cfg.validate().is_ok().then_some(cfg)
}

/// Peak extra bytes of one `loss_and_grad` call over all of `inputs`' positions, the inputs and
/// the gradient buffer allocated beforehand; run on a rayon pool of `threads` threads.
pub fn loss_and_grad_peak(cfg: &LossConfig, inputs: &LossInputs, threads: usize) -> usize {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool");
    let mut grad = vec![0f32; inputs.logits.len()];
    // Touch the pool once so its own start-up allocations are not counted.
    pool.install(|| {
        let few = LossInputs::new(4, 64, 4, 1);
        let mut g = vec![0f32; few.logits.len()];
        objectives::loss_and_grad(cfg, &few.chunk(), &mut g);
    });
    let (out, peak) =
        pool.install(|| peak_extra(|| objectives::loss_and_grad(cfg, &inputs.chunk(), &mut grad)));
    assert!(out.loss_sum.is_finite(), "{cfg:?}: loss {}", out.loss_sum);
    assert!(grad.iter().all(|g| g.is_finite()), "{cfg:?}: gradient");
    peak
}

/// A tiny student (so that its own activations are small next to the loss's chunk buffers) of
/// vocabulary `vocab`, random init, written as `config.json` in `dir`.
pub fn tiny_student(dir: &Path, vocab: usize, seq: usize) -> Student {
    let mut spec = TinySpec::new(Architecture::Llama, vocab);
    spec.hidden_size = 8;
    spec.intermediate_size = 16;
    spec.layers = 1;
    spec.heads = 1;
    spec.kv_heads = 1;
    spec.max_position_embeddings = seq.max(16);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&spec.config_json()).unwrap(),
    )
    .unwrap();
    Student::from_dir(dir, 0, &Device::Cpu).unwrap()
}

/// A training micro-batch of `rows` sequences of `seq` tokens with top-k records.
pub fn shard_batch(rows: usize, seq: usize, k: usize, vocab: usize) -> ShardBatch {
    let n = rows * seq;
    let mut b = ShardBatch::with_capacity(seq, k, rows);
    let (lp, tail) = topk_logprobs(k);
    let lp16: Vec<half::f16> = lp.iter().map(|&x| half::f16::from_f32(x)).collect();
    for r in 0..rows {
        b.seq_ids.push(r as u64);
    }
    for p in 0..n {
        b.input_ids.push(((p * 7919 + 3) % vocab) as u32);
        b.loss_mask.push(p % seq != seq - 1);
        topk_ids(p, k, vocab, &mut b.topk_ids);
        b.topk_logprobs.extend_from_slice(&lp16);
        b.tail_logmass.push(tail);
    }
    b
}

/// Positions per loss chunk in `trainer::micro_batch` for `vocab`.
pub fn chunk_positions(vocab: usize) -> usize {
    (trainer::LOSS_CHUNK_BYTES / 4 / vocab).max(1)
}

/// Peak extra bytes of the student's forward and backward alone (no output projection, no loss)
/// on `batch`: what `micro_batch` needs besides the loss. Gradients retained.
pub fn model_peak(student: &Student, batch: &ShardBatch) -> usize {
    let (b, s) = (batch.rows(), batch.seq_len);
    let ids = Tensor::from_slice(&batch.input_ids, (b, s), &Device::Cpu).unwrap();
    let (grads, peak) = peak_extra(|| {
        let hidden = student.model.forward_hidden(&ids, Mode::Train).unwrap();
        let surrogate = (hidden * 1e-3).unwrap().sum_all().unwrap();
        surrogate.backward().unwrap()
    });
    drop(grads);
    peak
}

/// Peak extra bytes of one `trainer::micro_batch` on `batch` (loss, gradient, output-projection
/// backward, student backward; the gradient store it returns included).
pub fn micro_batch_peak(student: &Student, batch: &ShardBatch, cfg: &LossConfig) -> usize {
    let normalizer = trainer::count_positions(batch, cfg.objective);
    let mut acc = None;
    let (out, peak) =
        peak_extra(|| trainer::micro_batch(student, batch, cfg, normalizer, &mut acc).unwrap());
    assert!(
        out.loss_sum.is_finite(),
        "micro_batch loss {}",
        out.loss_sum
    );
    drop(acc);
    peak
}

/// What `micro_batch` may allocate for `positions` positions at `vocab`, given the student's
/// own forward/backward peak `model`: four `[chunk, vocab]` f32 buffers (the chunk's logits, the
/// reused gradient buffer, its copy as a tensor, and one spare), four `[vocab, hidden]`
/// output-projection gradients (per-chunk, accumulated, the store's, one spare), and 16 MiB.
/// Independent of the positions once they exceed one chunk.
pub fn micro_batch_bound(positions: usize, vocab: usize, hidden: usize, model: usize) -> usize {
    let chunk = chunk_positions(vocab).min(positions);
    4 * chunk * vocab * 4 + 4 * vocab * hidden * 4 + model + 16 * MIB
}
