//! Fixtures for the tests and benches (feature `testkit`, on for them through the crate's
//! dev-dependency on itself): synthetic teacher logits and shard batches, sample manifests, and
//! re-exports of the random models of [`crate::model`]. Deterministic for a seed; nothing is
//! downloaded. Library code never imports this module.

pub use crate::model::init::{write_tiny_model, Normal, TinySpec};

use crate::cache::ShardBatch;

/// The largest `|a − b|` over two tensors of one shape, as f32.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_dtype(candle_core::DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("two tensors of one shape")
}

/// The largest magnitude in `t`.
pub fn max_abs(t: &candle_core::Tensor) -> f32 {
    t.abs()
        .and_then(|a| a.max_all())
        .and_then(|m| m.to_dtype(candle_core::DType::F32))
        .and_then(|m| m.to_scalar::<f32>())
        .expect("a non-empty tensor")
}

/// The largest difference of `got` from `want`, relative to the largest magnitude in `want`
/// (which must not be all zeros).
pub fn rel_max_diff(got: &candle_core::Tensor, want: &candle_core::Tensor) -> f32 {
    let scale = max_abs(want);
    assert!(scale > 0.0, "the reference is all zeros");
    max_abs_diff(got, want) / scale
}

/// `rows` rows of LLM-like logits over `vocab`: Zipf-shaped in the id (frequent, small ids are
/// likelier) with Gaussian noise, so the top-k is spread over the vocabulary as in real teachers.
pub fn llm_like_logits(rows: usize, vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = Normal::new(seed);
    let mut out = Vec::with_capacity(rows * vocab);
    for _ in 0..rows {
        let sharpness = 1.0 + rng.uniform() as f32;
        out.extend((0..vocab).map(|y| -sharpness * ((1 + y) as f32).ln() + 1.5 * rng.sample()));
    }
    out
}

/// A shard batch of `rows` sequences of `seq_len` tokens whose top-k records come from
/// [`llm_like_logits`] (real top-k selection and tail mass), for benchmarks of the cache format.
pub fn llm_like_batch(
    rows: usize,
    seq_len: usize,
    k: usize,
    vocab: usize,
    seed: u64,
) -> ShardBatch {
    use half::slice::HalfFloatSliceExt;
    let mut b = ShardBatch::new(seq_len, k);
    let positions = rows * seq_len;
    let mut lp = vec![0f32; positions * k];
    b.topk_ids.resize(positions * k, 0);
    b.tail_logmass.resize(positions, 0.0);
    // Generate in slices to bound memory.
    let step = 256;
    for start in (0..positions).step_by(step) {
        let n = step.min(positions - start);
        let logits = llm_like_logits(n, vocab, seed.wrapping_add(start as u64));
        crate::precompute::topk::topk_rows(
            &logits,
            vocab,
            k,
            &mut b.topk_ids[start * k..(start + n) * k],
            &mut lp[start * k..(start + n) * k],
            &mut b.tail_logmass[start..start + n],
        )
        .expect("k <= vocab");
    }
    b.topk_logprobs.resize(positions * k, half::f16::ZERO);
    b.topk_logprobs.convert_from_f32_slice(&lp);
    for r in 0..rows {
        b.seq_ids.push(r as u64);
        b.input_ids
            .extend((0..seq_len).map(|i| ((i * 7919 + r) % vocab) as u32));
        b.loss_mask.extend(std::iter::repeat_n(true, seq_len));
    }
    b
}

/// A plausible manifest with `shards` shards of `rows` rows of 16 tokens each.
pub fn sample_manifest(shards: u64, rows: u64) -> crate::cache::manifest::Manifest {
    let seq_len = 16;
    crate::cache::manifest::Manifest {
        format_version: crate::cache::FORMAT_VERSION,
        taidcache_version: env!("CARGO_PKG_VERSION").into(),
        teacher: crate::cache::manifest::TeacherInfo {
            model_type: "llama".into(),
            architecture: "LlamaForCausalLM".into(),
            vocab_size: 1000,
            config_sha256: "c".repeat(64),
            safetensors_header_sha256: std::collections::BTreeMap::from([(
                "model.safetensors".to_string(),
                "a".repeat(64),
            )]),
            weights_xxh3: Some("d".repeat(32)),
            source: "models/teacher".into(),
        },
        tokenizer_sha256: "b".repeat(64),
        corpus: crate::cache::manifest::CorpusInfo {
            files: vec![crate::cache::manifest::CorpusFile {
                path: "data/train.jsonl".into(),
                format: "jsonl".into(),
                bytes: 12345,
                xxh3: "0".repeat(32),
            }],
            text_field: "text".into(),
            text_split: "document".into(),
        },
        packing: crate::cache::manifest::PackingInfo {
            seq_len,
            eos_id: 2,
            pad_id: 0,
            add_special_tokens: false,
            shard_rows: rows as usize,
        },
        top_k: 8,
        vocab_size: 1000,
        dtype: "f32".into(),
        temperature: 1.0,
        value_encoding: crate::cache::VALUE_ENCODING_F16.into(),
        tail_draws: 0,
        worker: None,
        complete: true,
        total_sequences: Some(shards * rows),
        shards: (0..shards)
            .map(|i| crate::cache::manifest::ShardEntry {
                index: i,
                path: crate::cache::shard_rel_path(i),
                rows,
                tokens: rows * seq_len as u64,
                bytes: 1000 + i,
                seq_id_start: i * rows,
                seq_id_end: (i + 1) * rows,
                xxh3: format!("{i:032x}"),
            })
            .collect(),
        import: None,
    }
}

/// A generator of LLM-like teacher logits for storage measurements at real vocabulary sizes
/// (`benches/storage.rs`). Each row (one position) is built as follows:
///
/// - a target entropy `H ~ U(1, 4)` nats, reached by a Zipf exponent `s(H)` over ranks: the row's
///   distribution is `p(rank r) ∝ (1 + r)^(−s)`, with `s` read from a table of the exact
///   entropies of that law over the whole vocabulary;
/// - the ranking: [`SyntheticTeacher::CONTEXT`] distinct "context" ids drawn with
///   `P(id) ∝ 1/(id + 1)` (frequent ids — small ids, as in BPE vocabularies ordered by frequency —
///   are likelier) take ranks 0, 1, 2, …, each logit jittered by N(0, 0.3²); every other id `y`
///   follows with rank `CONTEXT + y`;
/// - logits `−s · ln(1 + rank)`.
///
/// So the top-k ids spread over the whole vocabulary, skewed towards frequent ids, and the
/// top-k log-probs fall off like a real teacher's. Deterministic for a seed.
pub struct SyntheticTeacher {
    vocab: usize,
    /// `ln(1 + CONTEXT + y)` for every id.
    base: Vec<f32>,
    /// (exponent, entropy in nats), entropy decreasing.
    table: Vec<(f64, f64)>,
    rng: Normal,
}

impl SyntheticTeacher {
    /// Ids per row that are drawn as the row's likeliest tokens.
    pub const CONTEXT: usize = 256;

    pub fn new(vocab: usize, seed: u64) -> Self {
        let table = (0..=60)
            .map(|i| {
                let s = 0.9 + 0.05 * i as f64;
                let (mut z, mut zl) = (0f64, 0f64);
                for r in 0..vocab {
                    let l = ((1 + r) as f64).ln();
                    let w = (-s * l).exp();
                    z += w;
                    zl += w * l;
                }
                // H = ln Z + s · E[ln(1 + r)]
                (s, z.ln() + s * zl / z)
            })
            .collect();
        let base = (0..vocab)
            .map(|y| ((1 + Self::CONTEXT + y) as f32).ln())
            .collect();
        Self {
            vocab,
            base,
            table,
            rng: Normal::new(seed),
        }
    }

    /// The Zipf exponent whose distribution over the vocabulary has entropy `h` (interpolated).
    pub fn exponent_for_entropy(&self, h: f64) -> f64 {
        let t = &self.table;
        let i = t
            .iter()
            .position(|&(_, e)| e <= h)
            .unwrap_or(t.len() - 1)
            .max(1);
        let ((s0, h0), (s1, h1)) = (t[i - 1], t[i]);
        if h0 == h1 {
            s1
        } else {
            s0 + (s1 - s0) * (h0 - h) / (h0 - h1)
        }
    }

    /// Fill `out` (length vocab) with the next row's logits.
    pub fn row(&mut self, out: &mut [f32]) {
        assert_eq!(out.len(), self.vocab);
        let h = 1.0 + 3.0 * self.rng.uniform();
        let s = self.exponent_for_entropy(h) as f32;
        for (o, b) in out.iter_mut().zip(&self.base) {
            *o = -s * b;
        }
        let ln_v = ((self.vocab + 1) as f64).ln();
        let mut rank = 0usize;
        let mut seen = std::collections::HashSet::with_capacity(2 * Self::CONTEXT);
        while rank < Self::CONTEXT.min(self.vocab) {
            let id = ((self.rng.uniform() * ln_v).exp() as usize).saturating_sub(1);
            let id = id.min(self.vocab - 1);
            if seen.insert(id) {
                out[id] = -s * ((1 + rank) as f32).ln() + 0.3 * self.rng.sample();
                rank += 1;
            }
        }
    }
}
