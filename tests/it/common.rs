//! Shared fixtures of the integration tests: tiny teachers, corpora, and cache readers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use taidcache::cache::manifest::Manifest;
use taidcache::cache::reader::ShardReader;
use taidcache::cache::ShardBatch;
use taidcache::corpus::testing::train_test_tokenizer;
use taidcache::model::Architecture;
use taidcache::testing::{write_tiny_model, Normal, TinySpec};

pub const ALL_ARCHS: [Architecture; 5] = [
    Architecture::Llama,
    Architecture::Mistral,
    Architecture::Qwen2,
    Architecture::Qwen3,
    Architecture::Phi3,
];

const WORDS: &[&str] = &[
    "the",
    "a",
    "cache",
    "teacher",
    "student",
    "token",
    "model",
    "learns",
    "from",
    "every",
    "step",
    "and",
    "of",
    "distills",
    "knowledge",
    "into",
    "small",
    "large",
    "fast",
    "slow",
    "data",
    "shard",
    "reads",
    "writes",
    "is",
];

/// `docs` documents of seeded pseudo-text.
pub fn corpus_texts(docs: usize, seed: u64) -> Vec<String> {
    let mut rng = Normal::new(seed);
    (0..docs)
        .map(|_| {
            let words = 5 + (rng.uniform() * 40.0) as usize;
            let mut s = String::new();
            for i in 0..words {
                let w = WORDS[(rng.uniform().powi(2) * WORDS.len() as f64) as usize % WORDS.len()];
                if i > 0 {
                    s.push(' ');
                }
                s.push_str(w);
            }
            s.push('.');
            s
        })
        .collect()
}

/// Write texts as JSONL with a `text` field.
pub fn write_jsonl(path: &Path, texts: &[String]) {
    let lines: Vec<String> = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t, "id": 1 }).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A teacher directory (tiny random model + trained tokenizer) and a JSONL corpus.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub teacher: PathBuf,
    pub corpus: PathBuf,
}

impl Fixture {
    pub fn new(arch: Architecture, docs: usize) -> Self {
        Self::with_spec(TinySpec::new(arch, 320), docs)
    }

    pub fn with_spec(spec: TinySpec, docs: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let texts = corpus_texts(docs, 11);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tok = train_test_tokenizer(&refs, 300);
        let eos = taidcache::corpus::find_eos(&tok).expect("test tokenizer has an EOS token");
        let teacher = dir.path().join("teacher");
        let spec = TinySpec {
            eos_token_id: eos,
            ..spec
        };
        write_tiny_model(&teacher, &spec, Some(&tok)).unwrap();
        let corpus = dir.path().join("corpus.jsonl");
        write_jsonl(&corpus, &texts);
        Self {
            dir,
            teacher,
            corpus,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A one-layer Qwen3 student (vocabulary 320, EOS 0, init seed `seed`) sharing the teacher's
    /// tokenizer, written to `name` in the fixture's directory.
    pub fn student(&self, name: &str, seed: u64) -> PathBuf {
        let student = self.path(name);
        let mut spec = TinySpec::new(Architecture::Qwen3, 320);
        spec.seed = seed;
        spec.layers = 1;
        spec.eos_token_id = 0;
        let tok = taidcache::corpus::load_tokenizer(&self.teacher.join("tokenizer.json")).unwrap();
        write_tiny_model(&student, &spec, Some(&tok)).unwrap();
        student
    }
}

/// The CLI binary.
pub fn taidcache(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args(args)
        .output()
        .unwrap()
}

/// Every row of a cache, decoded, sorted by seq_id: one `ShardBatch` of one row each.
pub fn read_rows(cache: &Path) -> Vec<ShardBatch> {
    let manifest = Manifest::load(&cache.join("manifest.json")).unwrap();
    let mut rows = Vec::new();
    for shard in &manifest.shards {
        rows.extend(read_shard_rows(&cache.join(&shard.path)));
    }
    rows.sort_by_key(|r| r.seq_ids[0]);
    rows
}

pub fn read_shard_rows(path: &Path) -> Vec<ShardBatch> {
    let reader = ShardReader::open(path).unwrap();
    let (s, k) = (reader.seq_len(), reader.top_k());
    let mut rows = Vec::new();
    for g in 0..reader.num_row_groups() {
        let mut b = ShardBatch::new(s, k);
        reader.read_row_group_into(g, &mut b).unwrap();
        for r in 0..b.rows() {
            let mut one = ShardBatch::new(s, k);
            one.seq_ids.push(b.seq_ids[r]);
            one.input_ids
                .extend_from_slice(&b.input_ids[r * s..(r + 1) * s]);
            one.loss_mask
                .extend_from_slice(&b.loss_mask[r * s..(r + 1) * s]);
            one.topk_ids
                .extend_from_slice(&b.topk_ids[r * s * k..(r + 1) * s * k]);
            one.topk_logprobs
                .extend_from_slice(&b.topk_logprobs[r * s * k..(r + 1) * s * k]);
            one.tail_logmass
                .extend_from_slice(&b.tail_logmass[r * s..(r + 1) * s]);
            let d = b.draws;
            one.draws = d;
            one.draw_ids
                .extend_from_slice(&b.draw_ids[r * s * d..(r + 1) * s * d]);
            one.draw_logprobs
                .extend_from_slice(&b.draw_logprobs[r * s * d..(r + 1) * s * d]);
            rows.push(one);
        }
    }
    rows
}

/// Assert two caches hold the same rows, bit for bit.
pub fn assert_same_rows(a: &[ShardBatch], b: &[ShardBatch]) {
    assert_eq!(a.len(), b.len(), "row counts differ");
    for (x, y) in a.iter().zip(b) {
        let id = x.seq_ids[0];
        assert_eq!(x.seq_ids, y.seq_ids);
        assert_eq!(x.input_ids, y.input_ids, "input_ids of seq {id}");
        assert_eq!(x.loss_mask, y.loss_mask, "loss_mask of seq {id}");
        assert_eq!(x.topk_ids, y.topk_ids, "topk_ids of seq {id}");
        let bits = |v: &[half::f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&x.topk_logprobs),
            bits(&y.topk_logprobs),
            "topk_logprobs of seq {id}"
        );
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&x.tail_logmass),
            bits(&y.tail_logmass),
            "tail_logmass of seq {id}"
        );
        assert_eq!(x.draws, y.draws, "tail draws per position");
        assert_eq!(x.draw_ids, y.draw_ids, "tail draw ids of seq {id}");
        let bits = |v: &[half::f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&x.draw_logprobs),
            bits(&y.draw_logprobs),
            "tail draw log-probs of seq {id}"
        );
    }
}

/// The bytes of every file below `dir`, by relative path.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Assert that `stderr` names every one of `parts`.
pub fn expect(stderr: &str, parts: &[&str]) {
    for p in parts {
        assert!(stderr.contains(p), "`{p}` not in: {stderr}");
    }
}

/// Run `tests/python/check_cache.py CACHE ARGS…` (plain pyarrow) and assert it passes.
pub fn assert_check_cache_py_accepts(cache: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_cache.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(cache)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check_cache.py failed on {}:\n{}\n{}",
        cache.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
