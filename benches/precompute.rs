//! Precompute overlap: a whole `precompute::run` (tokens → teacher → top-k → zstd Parquet shards
//! and manifest) against the teacher forward passes alone (hidden states and lm_head logits, in the
//! logits chunks precompute uses: `precompute::forward_chunks` with the chunks dropped) on
//! the same number of batches of the same shape. The difference is what top-k, encoding,
//! compression and writing add on top of the forward, i.e. what the pipeline fails to hide.
//!
//! Teacher: a random Llama of 2 layers, hidden 256, vocab 32,000 (so the lm_head and the top-k
//! are as large as for a real 32k-vocabulary teacher); corpus: 64 sequences of 256 token ids;
//! batches of 4; k = 50. Throughput in tokens. `startup` is a whole run over a one-sequence
//! corpus: the fixed cost (loading and hashing the teacher, tokenizer and corpus, one forward,
//! the manifest) that `full` pays once and a real, hours-long run amortizes.
//!
//! The two sides are also timed in alternation after the criterion groups, `PAIRS` rounds in
//! the order full, forward, forward, full, ..., because on a shared machine two groups measured
//! a minute apart can drift by 10% apart from any code change: the median of the per-round
//! ratios full / forward goes to `target/bench-results/precompute.json` for `make bench`.
//!
//! `bf16_products`: one product of a teacher's shapes (the output projection of a 49,152-token
//! vocabulary on a 128-row logits chunk, and an MLP projection on a 1,024-token batch), candle's
//! f32 matmul against [`PackedBf16::matmul_with`] on each kernel this CPU has (AMX tiles,
//! AVX-512 `vdpbf16ps`, the portable loop), in FLOP: what `--dtype bf16` changes on the CPU.
//!
//! `precompute-draws`: the same whole run with `--tail-samples 16` against without, paired the
//! same way (`target/bench-results/precompute-draws.json`): what the tail draws add.

#[path = "common/paired.rs"]
mod paired;
#[path = "common/results.rs"]
mod results;

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, Criterion, Throughput};
use taidcache::model::bf16_products::{Kernel, PackedBf16};
use taidcache::model::{Architecture, ModelDir};
use taidcache::precompute::{self, PrecomputeOptions};
use taidcache::testing::{write_tiny_model, TinySpec};

const VOCAB: usize = 32_000;
const SEQ_LEN: usize = 256;
const SEQS: usize = 64;
const BATCH: usize = 4;

fn fixture(dir: &Path, seqs: usize) -> PrecomputeOptions {
    let mut spec = TinySpec::new(Architecture::Llama, VOCAB);
    spec.hidden_size = 256;
    spec.intermediate_size = 768;
    spec.heads = 4;
    spec.kv_heads = 2;
    spec.layers = 2;
    spec.max_position_embeddings = 2 * SEQ_LEN;
    let teacher = dir.join("teacher");
    let tok = taidcache::corpus::testing::sample_tokenizer(300);
    write_tiny_model(&teacher, &spec, Some(&tok)).unwrap();
    // Token-id documents of exactly one sequence each (seq_len − 1 ids + the end-of-text token).
    let corpus = dir.join(format!("corpus-{seqs}.jsonl"));
    let mut f = std::fs::File::create(&corpus).unwrap();
    for d in 0..seqs {
        let ids: Vec<u32> = (0..SEQ_LEN - 1)
            .map(|i| ((d * 7919 + i * 104_729) % (VOCAB - 1) + 1) as u32)
            .collect();
        writeln!(f, "{}", serde_json::json!({ "text": ids })).unwrap();
    }
    let mut o = PrecomputeOptions::new(&teacher, vec![corpus], dir.join(format!("cache-{seqs}")));
    o.top_k = 50;
    o.seq_len = SEQ_LEN;
    o.batch_size = BATCH;
    o.shard_rows = 16;
    o.progress = false;
    o
}

const PAIRS: usize = 6;

/// Everything both sides of the comparison need.
struct Setup {
    _dir: tempfile::TempDir,
    opts: PrecomputeOptions,
    /// `opts` with 16 tail draws per position, into another directory.
    draws: PrecomputeOptions,
    one: PrecomputeOptions,
    sequences: usize,
    teacher: taidcache::model::Decoder,
    ids: Tensor,
}

fn setup() -> Setup {
    // As the `taidcache` binary runs (see `single_threaded_candle_ops`, `keep_freed_memory`).
    taidcache::single_threaded_candle_ops();
    taidcache::keep_freed_memory();
    let dir = tempfile::tempdir().unwrap();
    let opts = fixture(dir.path(), SEQS);
    let one = fixture(dir.path(), 1);
    let mut draws = opts.clone();
    draws.tail_samples = 16;
    draws.out = dir.path().join("cache-draws");
    // One run to learn the number of sequences the corpus packs into.
    let summary = precompute::run(&opts, &mut Vec::new()).unwrap();
    let sequences = summary.total_sequences as usize;
    let teacher = ModelDir::open(&opts.teacher)
        .unwrap()
        .load(DType::F32, &Device::Cpu)
        .unwrap();
    let ids: Vec<u32> = (0..BATCH * SEQ_LEN)
        .map(|i| (i * 31 % VOCAB) as u32)
        .collect();
    let ids = Tensor::from_slice(&ids, (BATCH, SEQ_LEN), &Device::Cpu).unwrap();

    Setup {
        _dir: dir,
        opts,
        draws,
        one,
        sequences,
        teacher,
        ids,
    }
}

impl Setup {
    fn full(&self) {
        std::fs::remove_dir_all(&self.opts.out).unwrap();
        precompute::run(&self.opts, &mut Vec::new()).unwrap();
    }

    fn with_draws(&self) {
        let _ = std::fs::remove_dir_all(&self.draws.out);
        precompute::run(&self.draws, &mut Vec::new()).unwrap();
    }

    fn forward_only(&self) {
        for _ in 0..self.sequences.div_ceil(BATCH) {
            precompute::forward_chunks(&self.teacher, &self.ids, 50, false, |chunk| {
                std::hint::black_box(chunk);
                Ok(())
            })
            .unwrap();
        }
    }
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let mut group = c.benchmark_group("precompute");
    group.sample_size(10);
    group.throughput(Throughput::Elements((s.sequences * SEQ_LEN) as u64));
    group.bench_function("full", |b| b.iter(|| s.full()));
    group.throughput(Throughput::Elements(SEQ_LEN as u64));
    group.bench_function("startup", |b| {
        b.iter(|| {
            let _ = std::fs::remove_dir_all(&s.one.out);
            precompute::run(&s.one, &mut Vec::new()).unwrap()
        })
    });
    group.throughput(Throughput::Elements((s.sequences * SEQ_LEN) as u64));
    group.bench_function("forward_only", |b| b.iter(|| s.forward_only()));
    group.finish();
}

/// Full and forward-only runs in alternation; the median per-round ratio.
fn paired() {
    let s = setup();
    s.full();
    s.forward_only();
    let (full, fwd) = paired::alternate(PAIRS, || s.full(), || s.forward_only());
    paired::record("precompute", ["full", "forward_only"], "s", &full, &fwd);
    s.with_draws();
    let (draws, full) = paired::alternate(PAIRS, || s.with_draws(), || s.full());
    paired::record(
        "precompute-draws",
        ["draws_16", "no_draws"],
        "s",
        &draws,
        &full,
    );
}

/// candle's f32 product against the bf16 one on the same shapes.
fn bf16_products(c: &mut Criterion) {
    let mut group = c.benchmark_group("bf16_products");
    group.sample_size(10);
    for (m, n, k) in [(128usize, 49_152usize, 576usize), (1024, 1536, 576)] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        let packed = PackedBf16::pack(&w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), n, k);
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_function(format!("f32_candle/{m}x{n}x{k}"), |b| {
            b.iter(|| x.matmul(&w.t().unwrap()).unwrap())
        });
        for (kernel, name) in [
            (Kernel::Amx, "bf16_amx"),
            (Kernel::Dpbf16, "bf16_dpbf16"),
            (Kernel::Portable, "bf16_portable"),
        ] {
            if kernel.is_available() {
                group.bench_function(format!("{name}/{m}x{n}x{k}"), |b| {
                    b.iter(|| packed.matmul_with(&xs, m, kernel))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench, bf16_products);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if paired::requested() {
        paired();
    }
}
