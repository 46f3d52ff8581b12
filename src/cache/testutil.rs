//! Test fixtures shared by the cache and inspect tests.

use std::collections::BTreeMap;

use half::f16;
use rand::{Rng, SeedableRng};

use super::manifest::*;
use super::writer::ShardBatch;
use super::{shard_rel_path, FORMAT_VERSION, VALUE_ENCODING_F16};

/// A batch of random but well-formed rows: ids < vocab, log-probs descending, tail
/// consistent with the top-k mass.
pub fn random_batch(
    rows: usize,
    seq_len: usize,
    k: usize,
    vocab: u32,
    first_seq_id: u64,
    seed: u64,
) -> ShardBatch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut b = ShardBatch::with_capacity(seq_len, k, rows);
    for r in 0..rows {
        b.seq_ids.push(first_seq_id + r as u64);
        for i in 0..seq_len {
            b.input_ids.push(rng.random_range(0..vocab));
            b.loss_mask.push(i + 3 < seq_len || r % 2 == 0);
            // Distinct ids: a random start and a stride of vocab / k >= 1.
            let start = rng.random_range(0..vocab);
            let mut lp = -rng.random_range(0.01f32..2.0);
            let mut mass = 0.0f64;
            for j in 0..k {
                b.topk_ids
                    .push((start + j as u32 * (vocab / k as u32)) % vocab);
                let v = f16::from_f32(lp);
                mass += f64::from(v.to_f32()).exp();
                b.topk_logprobs.push(v);
                lp -= rng.random_range(0.0f32..1.5);
            }
            // Scale so that the top-k holds at most 95% of the mass.
            let scale = (0.95 / mass).min(1.0);
            let first = b.topk_logprobs.len() - k;
            let mut mass = 0.0f64;
            for v in &mut b.topk_logprobs[first..] {
                *v = f16::from_f32(v.to_f32() + scale.ln() as f32);
                mass += f64::from(v.to_f32()).exp();
            }
            b.tail_logmass.push((1.0 - mass).ln() as f32);
        }
    }
    b
}

/// A plausible manifest with `shards` shards of `rows` rows of 16 tokens each.
pub fn sample_manifest(shards: u64, rows: u64) -> Manifest {
    let seq_len = 16;
    Manifest {
        format_version: FORMAT_VERSION,
        taidcache_version: env!("CARGO_PKG_VERSION").into(),
        teacher: TeacherInfo {
            model_type: "llama".into(),
            architecture: "LlamaForCausalLM".into(),
            vocab_size: 1000,
            config_sha256: "c".repeat(64),
            safetensors_header_sha256: BTreeMap::from([(
                "model.safetensors".to_string(),
                "a".repeat(64),
            )]),
            source: "models/teacher".into(),
        },
        tokenizer_sha256: "b".repeat(64),
        corpus: CorpusInfo {
            files: vec![CorpusFile {
                path: "data/train.jsonl".into(),
                format: "jsonl".into(),
                bytes: 12345,
                xxh3: "0".repeat(32),
            }],
            text_field: "text".into(),
            text_split: "document".into(),
        },
        packing: PackingInfo {
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
        value_encoding: VALUE_ENCODING_F16.into(),
        worker: None,
        complete: true,
        total_sequences: Some(shards * rows),
        shards: (0..shards)
            .map(|i| ShardEntry {
                index: i,
                path: shard_rel_path(i),
                rows,
                tokens: rows * seq_len as u64,
                bytes: 1000 + i,
                seq_id_start: i * rows,
                seq_id_end: (i + 1) * rows,
                xxh3: format!("{i:032x}"),
            })
            .collect(),
    }
}
