//! Bounded fuzzing of what reads user files: the manifest parser and its checks, the shard reader
//! (as `verify`, distill's `Cache::open_shard` and the decoders read a shard), and the corpus
//! readers (JSONL, JSONL field extraction, text, Parquet). Stable Rust, no fuzzing crate: seeded
//! mutations (`fuzz/engine.rs`) of valid inputs made in code (`fuzz/gen.rs`), structured where
//! bytes alone would only test the hash check (values, list lengths and footers rewritten with
//! the manifest's size and hash matching).
//!
//! Each target replays its regression corpus (`tests/fuzz-corpus/<target>/`) and then fuzzes for
//! `TAIDCACHE_FUZZ_SECONDS` (default 20; `0` replays only); `TAIDCACHE_FUZZ_SEED` fixes the
//! inputs. A panic fails the test and saves the input under
//! `$CARGO_TARGET_TMPDIR/fuzz-failures/`; an `Err` is the right answer to a broken file.

#[path = "fuzz/engine.rs"]
mod engine;
#[path = "fuzz/gen.rs"]
mod gen;

use std::path::Path;

use arrow::array::{make_array, ArrayData, ArrayRef};
use arrow::buffer::Buffer;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use rand::Rng;
use taidcache::cache::manifest::Manifest;
use taidcache::cache::validate::check_shard_file;
use taidcache::cache::{Cache, Encoding, ShardBatch, ShardReader, MANIFEST_FILE, SHARDS_DIR};
use taidcache::corpus::{CorpusOptions, DocumentReader, TextSplit};

use engine::{mutate_bytes_n, pick, Files, FuzzRng, Target};

/// Read every row group of a shard the ways the cache layer does.
fn read_all(r: &ShardReader) {
    let mut b = ShardBatch::new(r.seq_len().min(1 << 16), r.top_k().min(1 << 16));
    for g in 0..r.num_row_groups() {
        let _ = r.read_row_group_into(g, &mut b);
        let _ = r.read_row_group(g, &["topk_ids", "tail_logmass"]);
    }
    let _ = r.read_row_group(r.num_row_groups(), &[]);
}

/// Everything that reads a cache directory: `verify`, `Cache::open`/`open_complete`, units,
/// each shard through `check_shard_file` and `open_shard`, the student check, the identity check
/// against the valid manifest, and every file in `shards/` opened directly.
fn exec_cache(dir: &Path, reference: &Manifest) {
    let loaded = Manifest::load(&dir.join(MANIFEST_FILE));
    let _ = taidcache::inspect::verify(dir, &mut std::io::sink());
    if let Ok(m) = &loaded {
        let _ = m.identity_matches(reference);
        let _ = (m.total_rows(), m.total_tokens(), m.total_bytes());
    }
    if let Ok(cache) = Cache::open(dir) {
        let _ = cache.units(0.25);
        let _ = cache.units(1.0);
        let _ = cache.check_student(gen::VOCAB, Some("b"));
        for i in 0..cache.manifest().shards.len() {
            let _ = check_shard_file(&cache, i);
            if let Ok(r) = cache.open_shard(i) {
                read_all(&r);
            }
        }
    }
    let _ = Cache::open_complete(dir);
    if let Ok(entries) = std::fs::read_dir(dir.join(SHARDS_DIR)) {
        for e in entries.flatten() {
            if let Ok(r) = ShardReader::open(&e.path()) {
                read_all(&r);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Manifest mutations

/// A random JSON value that breaks assumptions: huge and negative numbers, wrong types.
fn interesting_json(rng: &mut FuzzRng) -> serde_json::Value {
    use serde_json::json;
    match rng.random_range(0..10) {
        0..=4 => {
            let n = pick(rng, engine::INTERESTING_NUMBERS);
            serde_json::from_str(n).unwrap_or(json!(n))
        }
        5 => json!(null),
        6 => json!(""),
        7 => json!(["../x", {}]),
        8 => json!(rng.random::<bool>()),
        _ => json!("shards/part-00000.parquet"),
    }
}

/// 1–3 structural edits of a JSON document: a value replaced, a key removed, an array element
/// duplicated, removed or swapped.
fn mutate_json(rng: &mut FuzzRng, v: &mut serde_json::Value) {
    fn paths(v: &serde_json::Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(here.clone());
        match v {
            serde_json::Value::Object(o) => {
                for (k, c) in o {
                    here.push(k.clone());
                    paths(c, here, out);
                    here.pop();
                }
            }
            serde_json::Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    here.push(i.to_string());
                    paths(c, here, out);
                    here.pop();
                }
            }
            _ => {}
        }
    }
    for _ in 0..rng.random_range(1..=3) {
        let mut all = Vec::new();
        paths(v, &mut Vec::new(), &mut all);
        let path = pick(rng, &all).clone();
        let pointer: String = path.iter().map(|s| format!("/{s}")).collect();
        let Some(node) = v.pointer_mut(&pointer) else {
            continue;
        };
        match rng.random_range(0..10) {
            0..=5 => *node = interesting_json(rng),
            6 => {
                if let serde_json::Value::Object(o) = node {
                    if let Some(k) = o.keys().nth(rng.random_range(0..o.len().max(1))).cloned() {
                        o.remove(&k);
                    }
                }
            }
            _ => {
                if let serde_json::Value::Array(a) = node {
                    if !a.is_empty() {
                        let (i, j) = (rng.random_range(0..a.len()), rng.random_range(0..a.len()));
                        match rng.random_range(0..3) {
                            0 => {
                                let dup = a[i].clone();
                                a.insert(j, dup);
                            }
                            1 => {
                                a.remove(i);
                            }
                            _ => a.swap(i, j),
                        }
                    }
                } else if let serde_json::Value::Number(n) = node {
                    // Off by one, the commonest inconsistency.
                    if let Some(u) = n.as_u64() {
                        *node = (u.wrapping_add(rng.random_range(0..3)).wrapping_sub(1)).into();
                    }
                }
            }
        }
    }
}

/// A mutated manifest: JSON edits, byte edits, or both.
fn mutate_manifest(rng: &mut FuzzRng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if rng.random_bool(0.75) {
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(bytes) {
            mutate_json(rng, &mut v);
            out = serde_json::to_vec_pretty(&v).unwrap();
        }
    }
    if rng.random_bool(0.35) {
        mutate_bytes_n(rng, &mut out, 3);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Shard mutations

/// One value of a column's innermost array set to one that breaks an invariant (an id at or
/// beyond the vocabulary, NaN, ±inf, a positive log-prob, a flipped mask bit, a seq id off).
fn mutate_leaf(rng: &mut FuzzRng, data: ArrayData) -> ArrayData {
    if let Some(child) = data.child_data().first().cloned() {
        let child = mutate_leaf(rng, child);
        return data.into_builder().child_data(vec![child]).build().unwrap();
    }
    if data.is_empty() || data.buffers().is_empty() {
        return data;
    }
    let i = data.offset() + rng.random_range(0..data.len());
    let mut bytes = data.buffers()[0].as_slice().to_vec();
    let mut put = |width: usize, value: &[u8]| {
        bytes[i * width..(i + 1) * width].copy_from_slice(value);
    };
    let vocab = gen::VOCAB as u32;
    let random: u64 = rng.random();
    match data.data_type() {
        DataType::Boolean => bytes[i / 8] ^= 1 << (i % 8),
        DataType::UInt8 => put(1, &[*pick(rng, &[0u8, 1, 254, 255, random as u8])]),
        DataType::UInt32 => put(
            4,
            &pick(
                rng,
                &[vocab, vocab - 1, vocab + 1, u32::MAX, 0, random as u32],
            )
            .to_le_bytes(),
        ),
        DataType::UInt64 => put(
            8,
            &pick(rng, &[0u64, 1, 5, 6, u64::MAX, random]).to_le_bytes(),
        ),
        DataType::Float16 => put(
            2,
            &pick(
                rng,
                &[
                    0x7e00u16,
                    0x7c00,
                    0xfc00,
                    0x3c00,
                    0x0000,
                    0x8000,
                    0xfbff,
                    random as u16,
                ],
            )
            .to_le_bytes(),
        ),
        DataType::Float32 => put(
            4,
            &pick(
                rng,
                &[
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    1.0,
                    0.5,
                    -0.0,
                    f32::MAX,
                    -1e-45,
                ],
            )
            .to_le_bytes(),
        ),
        _ => return data,
    }
    data.into_builder()
        .buffers(vec![Buffer::from_vec(bytes)])
        .build()
        .unwrap()
}

/// A valid cache of each encoding, with its shards' rows as record batches.
struct Seed {
    encoding: Encoding,
    manifest: Manifest,
    shards: Vec<Vec<u8>>,
    batches: Vec<Vec<RecordBatch>>,
}

fn seeds() -> Vec<Seed> {
    Encoding::ALL
        .into_iter()
        .map(|encoding| {
            let (manifest, shards) = gen::valid_cache(encoding);
            let batches = (0..gen::SHARDS)
                .map(|i| gen::record_batches(&gen::valid_batch(i), encoding))
                .collect();
            Seed {
                encoding,
                manifest,
                shards,
                batches,
            }
        })
        .collect()
}

/// A broken cache: one shard's bytes, values, list lengths or footer changed (its manifest entry
/// then matching it, mostly), or the manifest edited.
fn mutate_cache(rng: &mut FuzzRng, seed: &Seed) -> Files {
    let mut m = seed.manifest.clone();
    let mut shards = seed.shards.clone();
    let i = rng.random_range(0..shards.len());
    let kv = gen::footer(seed.encoding, &m);
    let kind = rng.random_range(0..100);
    match kind {
        0..=29 => mutate_bytes_n(rng, &mut shards[i], 4),
        30..=64 => {
            let mut batches = seed.batches[i].clone();
            for _ in 0..rng.random_range(1..=3) {
                let g = rng.random_range(0..batches.len());
                let c = rng.random_range(0..batches[g].num_columns());
                let mut cols: Vec<ArrayRef> = batches[g].columns().to_vec();
                cols[c] = make_array(mutate_leaf(rng, cols[c].to_data()));
                batches[g] = RecordBatch::try_new(batches[g].schema(), cols).unwrap();
            }
            shards[i] = gen::raw_shard(&batches, &kv);
        }
        65..=79 => {
            let mut batches = seed.batches[i].clone();
            let g = rng.random_range(0..batches.len());
            let c = rng.random_range(1..batches[g].num_columns());
            let mut o = gen::offsets(&batches[g], c);
            let j = rng.random_range(1..o.len());
            o[j] = (o[j] + rng.random_range(-3..=3)).max(0);
            if let Some(b) = gen::with_offsets(&batches[g], c, o) {
                batches[g] = b;
            }
            shards[i] = gen::raw_shard(&batches, &kv);
        }
        80..=89 => {
            let mut kv = kv;
            let j = rng.random_range(0..kv.len());
            match rng.random_range(0..3) {
                0 => {
                    kv.remove(j);
                }
                1 => kv[j].1 = pick(rng, engine::INTERESTING_NUMBERS).to_string(),
                _ => {
                    let mut v = kv[j].1.clone().into_bytes();
                    mutate_bytes_n(rng, &mut v, 2);
                    kv[j].1 = String::from_utf8_lossy(&v).into_owned();
                }
            }
            shards[i] = gen::raw_shard(&seed.batches[i], &kv);
        }
        _ => {}
    }
    // Mostly keep the manifest consistent with the files, so the hash check does not hide
    // what the reader and the position checks do with a broken value.
    if kind < 90 && rng.random_bool(0.9) {
        gen::set_entries(&mut m, &shards);
    }
    let mut files = gen::cache_files(&m, &shards);
    if kind >= 90 {
        let bytes = mutate_manifest(rng, &files[MANIFEST_FILE]);
        files.insert(MANIFEST_FILE.into(), bytes);
    }
    files
}

// ---------------------------------------------------------------------------------------------
// Corpus mutations

/// Read every document of the corpus files in `dir` with `text` and `ids` as the field and both
/// text splits (at most 100,000 documents each).
fn exec_corpus(dir: &Path) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for field in ["text", "ids"] {
        for split in [TextSplit::File, TextSplit::BlankLine] {
            let opts = CorpusOptions {
                text_field: field.into(),
                text_split: split,
            };
            for file in &files {
                if let Ok(reader) = DocumentReader::new(std::slice::from_ref(file), &opts) {
                    for doc in reader.take(100_000) {
                        let _ = doc;
                    }
                }
            }
        }
    }
}

/// A mutated corpus file: bytes, or (JSONL) a line's JSON edited, or (Parquet) a rewritten file
/// with odd ids and texts.
fn mutate_corpus_file(rng: &mut FuzzRng, name: &str, bytes: &[u8]) -> Vec<u8> {
    if name.ends_with(".jsonl") && rng.random_bool(0.5) {
        let text = String::from_utf8_lossy(bytes);
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        if !lines.is_empty() {
            let i = rng.random_range(0..lines.len());
            if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&lines[i]) {
                mutate_json(rng, &mut v);
                lines[i] = v.to_string();
            }
            return (lines.join("\n") + "\n").into_bytes();
        }
    }
    if name.ends_with(".parquet") && rng.random_bool(0.4) {
        let n = rng.random_range(0..6);
        let texts: Vec<Option<String>> = (0..n)
            .map(|_| {
                rng.random_bool(0.8).then(|| {
                    let mut s = b"some text".to_vec();
                    mutate_bytes_n(rng, &mut s, 3);
                    String::from_utf8_lossy(&s).into_owned()
                })
            })
            .collect();
        let ids: Vec<Option<Vec<i64>>> = (0..n)
            .map(|_| {
                rng.random_bool(0.8).then(|| {
                    (0..rng.random_range(0..4))
                        .map(|_| *pick(rng, &[0i64, 1, -1, 1 << 32, i64::MAX, i64::MIN]))
                        .collect()
                })
            })
            .collect();
        let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
        return gen::corpus_parquet(&refs, &ids);
    }
    let mut out = bytes.to_vec();
    mutate_bytes_n(rng, &mut out, 4);
    out
}

// ---------------------------------------------------------------------------------------------
// The targets

fn run_and_check(target: Target) {
    let outcome = engine::run(&target, engine::budget(), engine::seed());
    engine::assert_no_panics(target.name, &outcome);
}

#[test]
fn fuzz_manifest_parser_and_checks_never_panic() {
    let (reference, shards) = gen::valid_cache(Encoding::Plain);
    let mut base = gen::cache_files(&reference, &shards);
    base.remove(MANIFEST_FILE);
    let corpus = engine::corpus_cases("manifest");
    let starts: Vec<Vec<u8>> = corpus
        .iter()
        .filter_map(|(_, f)| f.get(MANIFEST_FILE).cloned())
        .collect();
    let generate = |rng: &mut FuzzRng| {
        let start = if rng.random_bool(0.7) {
            gen::manifest_bytes(&reference)
        } else {
            pick(rng, &starts).clone()
        };
        Files::from([(MANIFEST_FILE.to_string(), mutate_manifest(rng, &start))])
    };
    run_and_check(Target {
        name: "manifest",
        base,
        corpus,
        generate: &generate,
        exec: &|dir| exec_cache(dir, &reference),
    });
}

#[test]
fn fuzz_shard_reader_and_verify_never_panic() {
    let seeds = seeds();
    let reference = seeds[0].manifest.clone();
    let generate = |rng: &mut FuzzRng| {
        let seed = pick(rng, &seeds);
        mutate_cache(rng, seed)
    };
    run_and_check(Target {
        name: "shard",
        base: Files::new(),
        corpus: engine::corpus_cases("shard"),
        generate: &generate,
        exec: &|dir| exec_cache(dir, &reference),
    });
}

#[test]
fn fuzz_corpus_readers_never_panic() {
    let valid = gen::valid_corpus();
    let corpus = engine::corpus_cases("corpus");
    let mut starts: Vec<(String, Vec<u8>)> = valid.clone().into_iter().collect();
    for (_, files) in &corpus {
        starts.extend(files.clone());
    }
    let generate = |rng: &mut FuzzRng| {
        let (name, bytes) = pick(rng, &starts);
        let mut bytes = mutate_corpus_file(rng, name, bytes);
        if rng.random_bool(0.1) {
            // Splice: the head of one file onto the tail of another of the same format.
            let (other_name, other) = pick(rng, &starts);
            if Path::new(other_name).extension() == Path::new(name).extension() {
                let cut = rng.random_range(0..=bytes.len());
                let from = rng.random_range(0..=other.len());
                bytes.truncate(cut);
                bytes.extend_from_slice(&other[from..]);
            }
        }
        Files::from([(name.clone(), bytes)])
    };
    run_and_check(Target {
        name: "corpus",
        base: Files::new(),
        corpus,
        generate: &generate,
        exec: &exec_corpus,
    });
}

/// `tests/fuzz-corpus/` holds what `fuzz/gen.rs` makes (cases added by hand, such as a saved
/// fuzz failure, may sit beside them); `TAIDCACHE_FUZZ_WRITE_CORPUS=1` rewrites it.
#[test]
fn fuzz_regression_corpus_matches_its_generator() {
    let write = std::env::var_os("TAIDCACHE_FUZZ_WRITE_CORPUS").is_some();
    let mut stale = Vec::new();
    let mut count = 0;
    for (target, cases) in gen::regression_corpus() {
        for (case, files) in cases {
            count += 1;
            let dir = engine::corpus_dir(target).join(&case);
            if write {
                let _ = std::fs::remove_dir_all(&dir);
                engine::write_files(&dir, &files);
            } else if !dir.is_dir() || engine::read_files(&dir) != files {
                stale.push(format!("{target}/{case}"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "tests/fuzz-corpus differs from tests/it/fuzz/gen.rs in {} of {count} cases ({}); \
         rerun with TAIDCACHE_FUZZ_WRITE_CORPUS=1 and commit the files",
        stale.len(),
        stale.join(", ")
    );
    assert!(count >= 60, "{count} cases");
}

// ---------------------------------------------------------------------------------------------
// Corpus cases checked for their exact answer

/// The manifest regression case `name` over the valid plain cache's shards, in a new directory.
fn manifest_case(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (m, shards) = gen::valid_cache(Encoding::Plain);
    engine::write_files(dir.path(), &gen::cache_files(&m, &shards));
    let case = engine::corpus_dir("manifest")
        .join(name)
        .join(MANIFEST_FILE);
    std::fs::copy(case, dir.path().join(MANIFEST_FILE)).unwrap();
    dir
}

#[test]
fn manifest_whose_counts_overflow_u64_is_refused_naming_the_shard_field() {
    for (case, field) in [
        // The overlap check of the shard list meets this one first.
        ("rows-u64-max", "shards[1]"),
        ("tokens-overflow-u64", "shards[0].tokens"),
        ("total-rows-overflow", "shards[1]"),
    ] {
        let dir = manifest_case(case);
        let err = Manifest::load(&dir.path().join(MANIFEST_FILE)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(field), "{case}: `{field}` not in: {msg}");
        assert!(msg.contains("manifest.json"), "{case}: {msg}");
    }
}

/// Issue #19 item 11: `verify` allocated by the manifest's claim and aborted (SIGABRT) on this
/// one, which no test can catch, so it runs in a child process.
#[test]
fn verify_of_a_manifest_claiming_2_pow_40_tokens_fails_cleanly() {
    let dir = manifest_case("vocab-size-2-pow-40");
    let o = crate::common::taidcache(&["verify", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "status {:?}, stderr: {stderr}",
        o.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("vocab_size"), "{stderr}");
}

/// Issue #19 item 10: distill panicked indexing the vocabulary with the id
/// (`distill/objectives`).
#[test]
fn distill_of_a_hash_consistent_shard_with_an_id_at_vocab_is_an_error_naming_the_shard() {
    use taidcache::cache::{schema, write_shard_atomic, WriteOptions};
    use taidcache::model::Architecture;
    use taidcache::precompute::{self, PrecomputeOptions};

    let fx = crate::common::Fixture::new(Architecture::Llama, 20);
    let cache = fx.path("cache");
    let mut o = PrecomputeOptions::new(&fx.teacher, vec![fx.corpus.clone()], &cache);
    o.top_k = 8;
    o.seq_len = 16;
    o.shard_rows = 4;
    o.progress = false;
    precompute::run(&o, &mut Vec::new()).unwrap();
    let student = fx.path("student");
    let mut spec = taidcache::testing::TinySpec::new(Architecture::Qwen3, 320);
    spec.layers = 1;
    let tok = taidcache::corpus::load_tokenizer(&fx.teacher.join("tokenizer.json")).unwrap();
    taidcache::testing::write_tiny_model(&student, &spec, Some(&tok)).unwrap();

    // The last top-k id of every position of shard 0 set to the vocabulary size, rewritten by the
    // real writer; the manifest then records the new file's size and hash.
    let manifest_path = cache.join(MANIFEST_FILE);
    let mut m = Manifest::load(&manifest_path).unwrap();
    let shard = cache.join(&m.shards[0].path);
    let reader = ShardReader::open(&shard).unwrap();
    let mut rows = ShardBatch::new(reader.seq_len(), reader.top_k());
    for g in 0..reader.num_row_groups() {
        let mut b = ShardBatch::new(reader.seq_len(), reader.top_k());
        reader.read_row_group_into(g, &mut b).unwrap();
        rows.extend_from(&b);
    }
    drop(reader);
    let k = rows.k;
    for p in 0..rows.rows() * rows.seq_len {
        rows.topk_ids[p * k + k - 1] = m.vocab_size as u32;
    }
    let opts = WriteOptions {
        metadata: schema::footer_metadata(&m),
        ..WriteOptions::default()
    };
    let entry = write_shard_atomic(&shard, &rows, &opts).unwrap();
    (m.shards[0].bytes, m.shards[0].xxh3) = (entry.bytes, entry.xxh3);
    m.save_atomic(&manifest_path).unwrap();

    let out = fx.path("run");
    let o = crate::common::taidcache(&[
        "distill",
        "--cache",
        cache.to_str().unwrap(),
        "--student",
        student.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        // One pass with single-row batches: every row, so shard 0's too, is read.
        "--epochs",
        "1",
        "--batch-size",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "status {:?}, stderr: {stderr}",
        o.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("part-00000"),
        "the shard is not named: {stderr}"
    );
}
