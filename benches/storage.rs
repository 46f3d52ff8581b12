//! Storage: bytes per token and fidelity of the plain (v1), compact (v3) and steps (v2)
//! encodings at k = 50,
//! on two sources, written to `target/bench-results/storage.json` for `make bench`.
//!
//! - `synthetic`: [`SyntheticTeacher`] logits at vocab 151,936 (16 sequences of 1024 positions),
//!   through the real top-k; the reference for the KL is the exact f32 top-k and tail.
//! - `demo`: the demo teacher's cache (`demo-out/caches/train`, from `make demo`) re-encoded;
//!   its reference is the cache's own f16 values (the exact f32 ones were not kept), so its KL
//!   is the compact and steps encodings' loss on top of v1's.
//!
//! Fidelity is the mean over positions of KL(reference ‖ decoded), both taken as distributions
//! over the k ids plus one tail category and each renormalized. Sizes are whole shard files
//! (every column, footer included) over positions. `raw` is u32 ids + f16 values + f32 tail +
//! u32 token + mask byte, uncompressed. Not a criterion bench: the figures are sizes, not times.

#[path = "common/results.rs"]
mod results;

use std::path::{Path, PathBuf};

use half::f16;
use serde_json::json;
use taidcache::cache::reader::ShardReader;
use taidcache::cache::writer::{raw_bytes_per_position, WriteOptions};
use taidcache::cache::ShardBatch;
use taidcache::cache::{write_shard_atomic, Encoding, Manifest};
use taidcache::precompute::topk::topk_rows;
use taidcache::testing::SyntheticTeacher;

const K: usize = 50;
const VOCAB: usize = 151_936;
const SEQ_LEN: usize = 1024;
const ROWS: usize = 16;

/// The exact top-k records of a source and its shard batch (f16 values as v1 stores them).
struct Source {
    name: &'static str,
    /// Reference log-probs, `[positions, k]`, and tails, `[positions]`.
    logprobs: Vec<f32>,
    tails: Vec<f32>,
    batch: ShardBatch,
}

fn synthetic() -> Source {
    let mut teacher = SyntheticTeacher::new(VOCAB, 7);
    let positions = ROWS * SEQ_LEN;
    let mut batch = ShardBatch::new(SEQ_LEN, K);
    let mut logprobs = vec![0f32; positions * K];
    let mut tails = vec![0f32; positions];
    batch.topk_ids.resize(positions * K, 0);
    let step = 64;
    let mut logits = vec![0f32; step * VOCAB];
    for start in (0..positions).step_by(step) {
        for row in logits.chunks_mut(VOCAB) {
            teacher.row(row);
        }
        topk_rows(
            &logits,
            VOCAB,
            K,
            &mut batch.topk_ids[start * K..(start + step) * K],
            &mut logprobs[start * K..(start + step) * K],
            &mut tails[start..start + step],
        )
        .expect("finite logits");
    }
    batch.topk_logprobs = logprobs.iter().map(|&v| f16::from_f32(v)).collect();
    batch.tail_logmass = tails.clone();
    for r in 0..ROWS {
        batch.seq_ids.push(r as u64);
        // The text a greedy reader of this teacher would see: each token the previous top-1.
        batch.input_ids.push(0);
        for p in 1..SEQ_LEN {
            batch
                .input_ids
                .push(batch.topk_ids[(r * SEQ_LEN + p - 1) * K]);
        }
        batch.loss_mask.extend(std::iter::repeat_n(true, SEQ_LEN));
    }
    Source {
        name: "synthetic",
        logprobs,
        tails,
        batch,
    }
}

/// The demo cache's shards, concatenated (it is a few MB).
fn demo(root: &Path) -> Option<Source> {
    let cache = root.join("demo-out/caches/train");
    let m = Manifest::load(&cache.join("manifest.json")).ok()?;
    let mut batch = ShardBatch::new(m.packing.seq_len, m.top_k);
    let mut part = ShardBatch::new(m.packing.seq_len, m.top_k);
    for e in &m.shards {
        let r = ShardReader::open(&cache.join(&e.path)).ok()?;
        for g in 0..r.num_row_groups() {
            r.read_row_group_into(g, &mut part).ok()?;
            batch.extend_from(&part);
        }
    }
    Some(Source {
        name: "demo",
        logprobs: batch.topk_logprobs.iter().map(|v| v.to_f32()).collect(),
        tails: batch.tail_logmass.clone(),
        batch,
    })
}

/// Position `i`'s (id, log-prob) pairs of `ids`/`logprobs` sorted by id: format v3 stores each
/// position in id order, the others in rank order.
fn by_id(ids: &[u32], logprobs: impl Iterator<Item = f64>, out: &mut Vec<(u32, f64)>) {
    out.clear();
    out.extend(ids.iter().copied().zip(logprobs));
    out.sort_unstable_by_key(|&(id, _)| id);
}

/// Mean KL(reference ‖ decoded) over positions, on k ids + tail, each renormalized. Panics
/// unless every position decodes to the reference's ids (in any order).
fn mean_kl(src: &Source, decoded: &ShardBatch) -> f64 {
    let k = src.batch.k;
    let dist = |lp: &[(u32, f64)], tail: f64, out: &mut Vec<f64>| {
        out.clear();
        out.extend(lp.iter().map(|&(_, l)| l.exp()));
        out.push(tail.exp());
        let z: f64 = out.iter().sum();
        out.iter_mut().for_each(|p| *p /= z);
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (mut p, mut q) = (Vec::new(), Vec::new());
    let mut total = 0f64;
    let n = src.tails.len();
    for i in 0..n {
        let r = i * k..(i + 1) * k;
        by_id(
            &src.batch.topk_ids[r.clone()],
            src.logprobs[r.clone()].iter().map(|&v| v as f64),
            &mut a,
        );
        by_id(
            &decoded.topk_ids[r.clone()],
            decoded.topk_logprobs[r].iter().map(|v| v.to_f32() as f64),
            &mut b,
        );
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.0 == y.0),
            "position {i}: the ids do not round-trip"
        );
        dist(&a, src.tails[i] as f64, &mut p);
        dist(&b, decoded.tail_logmass[i] as f64, &mut q);
        total += p
            .iter()
            .zip(&q)
            .filter(|(&a, _)| a > 0.0)
            .map(|(&a, &b)| a * (a / b).ln())
            .sum::<f64>();
    }
    total / n as f64
}

fn measure(src: &Source, dir: &Path, figures: &mut Vec<serde_json::Value>) {
    let positions = src.tails.len() as f64;
    println!(
        "{}: {} positions, k = {}",
        src.name,
        src.tails.len(),
        src.batch.k
    );
    for encoding in Encoding::ALL {
        let path = dir.join(format!("{}-{}.parquet", src.name, encoding.name()));
        let opts = WriteOptions {
            encoding,
            ..WriteOptions::default()
        };
        let entry = write_shard_atomic(&path, &src.batch, &opts).expect("writing shard");
        let reader = ShardReader::open(&path).expect("reading shard back");
        let mut decoded = ShardBatch::new(src.batch.seq_len, src.batch.k);
        let mut part = ShardBatch::new(src.batch.seq_len, src.batch.k);
        for g in 0..reader.num_row_groups() {
            reader.read_row_group_into(g, &mut part).unwrap();
            decoded.extend_from(&part);
        }
        let bytes = entry.bytes as f64 / positions;
        let kl = mean_kl(src, &decoded);
        println!(
            "  {:8} {bytes:7.2} bytes/token   mean KL {kl:.3e} nats",
            encoding.name()
        );
        for (what, value, unit) in [
            ("bytes_per_token", bytes, "B/token"),
            ("kl_mean", kl, "nats"),
        ] {
            figures.push(json!({
                "name": format!("storage.{}.{}.{what}", src.name, encoding.name()),
                "value": value,
                "unit": unit,
            }));
        }
    }
    let raw = raw_bytes_per_position(src.batch.k) as f64;
    println!("  raw      {raw:7.2} bytes/token");
    figures.push(json!({
        "name": format!("storage.{}.raw.bytes_per_token", src.name),
        "value": raw,
        "unit": "B/token",
    }));
}

fn main() {
    // Criterion-style arguments from `cargo bench` (`--bench`, times) are accepted and ignored.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = results::target_dir().join("bench-data/storage");
    std::fs::create_dir_all(&dir).expect("creating bench-data/storage");
    let mut figures = Vec::new();
    measure(&synthetic(), &dir, &mut figures);
    match demo(&root) {
        Some(src) => measure(&src, &dir, &mut figures),
        None => println!("demo: no demo-out/caches/train (run `make demo` first); skipped"),
    }
    let path = results::write("storage.json", &serde_json::Value::Array(figures));
    println!("wrote {}", path.display());
}
