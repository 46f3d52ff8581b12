//! A cache holds one teacher, identified by its weights' content; every shard distill and
//! precompute rely on is checked against the manifest; bad ids and bad claims are errors that
//! name the file, never panics or aborts.

use std::path::{Path, PathBuf};

use crate::common::*;
use taidcache::cache::manifest::Manifest;
use taidcache::cache::{schema, write_shard_atomic, ShardBatch, WriteOptions};
use taidcache::distill::{self, DistillOptions};
use taidcache::model::Architecture;
use taidcache::precompute::{self, PrecomputeOptions};

/// Teacher `teacher` (A) and a copy `teacher-b` (B) of the same config, tokenizer and tensor
/// shapes whose weights differ in one mantissa bit of one value.
fn two_teachers() -> (Fixture, PathBuf) {
    let fx = Fixture::new(Architecture::Llama, 30);
    let b = fx.path("teacher-b");
    std::fs::create_dir_all(&b).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fx.teacher.join(f), b.join(f)).unwrap();
    }
    let weights = b.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    // The low byte of the file's last f32: the same header, a slightly other value.
    let at = bytes.len() - 4;
    bytes[at] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    (fx, b)
}

fn options(fx: &Fixture, teacher: &Path, out: &str) -> PrecomputeOptions {
    let mut o = PrecomputeOptions::new(teacher, vec![fx.corpus.clone()], fx.path(out));
    o.top_k = 8;
    o.seq_len = 24;
    o.batch_size = 3;
    o.shard_rows = 4;
    o.progress = false;
    o
}

fn manifest(cache: &Path) -> Manifest {
    Manifest::load(&cache.join("manifest.json")).unwrap()
}

/// A tiny student of the teachers' vocabulary and tokenizer.
fn student(fx: &Fixture) -> PathBuf {
    let dir = fx.path("student");
    let mut spec = taidcache::testing::TinySpec::new(Architecture::Qwen3, 320);
    spec.layers = 1;
    let tok = taidcache::corpus::load_tokenizer(&fx.teacher.join("tokenizer.json")).unwrap();
    taidcache::testing::write_tiny_model(&dir, &spec, Some(&tok)).unwrap();
    dir
}

fn distill_options(fx: &Fixture, cache: &Path, out: &str) -> DistillOptions {
    let mut o = DistillOptions::new(cache, student(fx), fx.path(out));
    o.steps = Some(2);
    o.batch_size = 2;
    o.progress = false;
    o
}

fn distill_error(o: &DistillOptions) -> String {
    distill::run(o, &mut Vec::new())
        .expect_err("distill must fail")
        .to_string()
}

#[test]
fn a_teacher_with_other_weights_cannot_resume_or_complete_another_teachers_cache() {
    let (fx, b) = two_teachers();
    let a_opts = options(&fx, &fx.teacher, "cache");
    precompute::run(&a_opts, &mut Vec::new()).unwrap();
    let a = manifest(&a_opts.out);
    let a_hash = a.teacher.weights_xxh3.clone().unwrap();
    assert_eq!(a_hash.len(), 32);

    // Complete: B used to be told "already complete, nothing to do".
    let b_opts = options(&fx, &b, "cache");
    let err = precompute::run(&b_opts, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("written by a teacher with other weights")
            && err.contains(&format!(
                "teacher.weights_xxh3 differs: the cache has {a_hash}, this run "
            ))
            && err.contains("choose another --out"),
        "{err}"
    );

    // Incomplete (as after a kill): B used to resume it.
    let mut m = a.clone();
    m.complete = false;
    m.total_sequences = None;
    m.shards.truncate(1);
    m.save_atomic(&a_opts.out.join("manifest.json")).unwrap();
    let err = precompute::run(&b_opts, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("teacher.weights_xxh3 differs"), "{err}");
    assert_eq!(manifest(&a_opts.out), m, "the refused run changed nothing");

    // A itself still resumes it, to the same manifest.
    let s = precompute::run(&a_opts, &mut Vec::new()).unwrap();
    assert_eq!(s.shards_resumed, 1);
    assert_eq!(manifest(&a_opts.out).shards, a.shards);

    // B hashes differently, A the same every time.
    let b_cache = options(&fx, &b, "cache-b");
    precompute::run(&b_cache, &mut Vec::new()).unwrap();
    let b_hash = manifest(&b_cache.out).teacher.weights_xxh3.unwrap();
    assert_ne!(b_hash, a_hash);
    assert_eq!(manifest(&a_opts.out).teacher.weights_xxh3.unwrap(), a_hash);
}

#[test]
fn a_worker_with_other_weights_cannot_join_a_cache_nor_be_merged() {
    let (fx, b) = two_teachers();
    let mut w0 = options(&fx, &fx.teacher, "cache");
    w0.workers = 2;
    w0.worker = 0;
    precompute::run(&w0, &mut Vec::new()).unwrap();
    let mut w1 = options(&fx, &b, "cache");
    w1.workers = 2;
    w1.worker = 1;
    let err = precompute::run(&w1, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("worker-00000-of-00002.json")
            && err.contains("written by a teacher with other weights"),
        "{err}"
    );
    assert!(
        !w1.out.join("manifests/worker-00001-of-00002.json").exists(),
        "the refused worker wrote nothing"
    );

    // A worker manifest of B made behind our back is refused by the merge, in words.
    let mut w1a = w1.clone();
    w1a.teacher = fx.teacher.clone();
    precompute::run(&w1a, &mut Vec::new()).unwrap();
    let path = w1.out.join("manifests/worker-00001-of-00002.json");
    let mut m = Manifest::load(&path).unwrap();
    m.teacher.weights_xxh3 = Some("e".repeat(32));
    m.save_atomic(&path).unwrap();
    std::fs::remove_file(w1.out.join("manifest.json")).unwrap();
    let out = taidcache(&["merge", w1.out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "teacher differs between workers, this worker ran with a teacher with other weights"
        ) && stderr.contains(&"e".repeat(32))
            && !stderr.contains("Some("),
        "{stderr}"
    );
}

#[test]
fn an_eval_cache_of_another_teacher_is_refused_unless_allowed() {
    let (fx, b) = two_teachers();
    let a = options(&fx, &fx.teacher, "cache");
    precompute::run(&a, &mut Vec::new()).unwrap();
    let bc = options(&fx, &b, "cache-b");
    precompute::run(&bc, &mut Vec::new()).unwrap();
    let mut o = distill_options(&fx, &a.out, "run");
    o.eval_cache = Some(bc.out.clone());
    let err = distill_error(&o);
    assert!(
        err.contains("--eval-cache")
            && err.contains(&format!(
                "{} was made by a teacher with other weights than --cache {}",
                bc.out.display(),
                a.out.display()
            ))
            && err.contains("--eval-cache-any-teacher"),
        "{err}"
    );
    assert!(!o.out.join("metrics.jsonl").exists());
    o.eval_cache_any_teacher = true;
    let s = distill::run(&o, &mut Vec::new()).unwrap();
    assert_eq!(s.steps, 2);
    assert!(s.eval.is_some(), "evaluated on the other teacher's cache");
}

#[test]
fn distill_refuses_a_manifest_listing_a_shard_twice() {
    let fx = Fixture::new(Architecture::Llama, 30);
    let a = options(&fx, &fx.teacher, "cache");
    precompute::run(&a, &mut Vec::new()).unwrap();
    let mut m = manifest(&a.out);
    // Shard 0 again, as a later shard: hash and size consistent with the file.
    let mut again = m.shards[0].clone();
    again.index = m.shards.last().unwrap().index + 1;
    m.shards.push(again);
    std::fs::write(
        a.out.join("manifest.json"),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
    let err = distill_error(&distill_options(&fx, &a.out, "run"));
    assert!(
        err.contains("manifest.json")
            && err.contains("shards/part-00000.parquet` is listed twice (also shards[0])"),
        "{err}"
    );
}

#[test]
fn a_lost_or_corrupt_listed_shard_is_named_and_never_trusted() {
    let fx = Fixture::new(Architecture::Llama, 30);
    let a = options(&fx, &fx.teacher, "cache");
    precompute::run(&a, &mut Vec::new()).unwrap();
    let rows = read_rows(&a.out);
    let shard1 = a.out.join("shards/part-00001.parquet");
    std::fs::remove_file(&shard1).unwrap();

    let err = distill_error(&distill_options(&fx, &a.out, "run"));
    assert!(
        err.contains("part-00001.parquet: listed in manifest.json but missing"),
        "{err}"
    );
    let v = taidcache(&["verify", a.out.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(1));

    // precompute no longer calls it complete: it names the shard and computes it again.
    let mut said = Vec::new();
    let s = precompute::run(&a, &mut said).unwrap();
    let said = String::from_utf8(said).unwrap();
    assert!(
        said.contains(
            "part-00001.parquet: listed in manifest.json but missing; computing it again"
        ),
        "{said}"
    );
    assert_eq!(s.shards_written, 1);
    assert_same_rows(&read_rows(&a.out), &rows);

    // An incomplete cache whose listed shard is corrupt (same size) is not resumed past it.
    let mut bytes = std::fs::read(&shard1).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&shard1, bytes).unwrap();
    let mut m = manifest(&a.out);
    m.complete = false;
    m.save_atomic(&a.out.join("manifest.json")).unwrap();
    let mut said = Vec::new();
    precompute::run(&a, &mut said).unwrap();
    let said = String::from_utf8(said).unwrap();
    assert!(
        said.contains("part-00001.parquet: content hash xxh3")
            && said.contains("the file is corrupt or was replaced; computing it again"),
        "{said}"
    );
    assert_same_rows(&read_rows(&a.out), &rows);
    assert!(manifest(&a.out).complete);

    // A directory where a shard should be is said to be one.
    std::fs::remove_file(&shard1).unwrap();
    std::fs::create_dir(&shard1).unwrap();
    let err = distill_error(&distill_options(&fx, &a.out, "run2"));
    assert!(
        err.contains(
            "part-00001.parquet: listed in manifest.json as a shard, but it is a directory"
        ),
        "{err}"
    );
}

/// Every row of shard `path`, as one batch.
fn whole_shard(path: &Path) -> ShardBatch {
    let rows = read_shard_rows(path);
    let mut all = ShardBatch::new(rows[0].seq_len, rows[0].k);
    for r in &rows {
        all.seq_ids.extend_from_slice(&r.seq_ids);
        all.input_ids.extend_from_slice(&r.input_ids);
        all.loss_mask.extend_from_slice(&r.loss_mask);
        all.topk_ids.extend_from_slice(&r.topk_ids);
        all.topk_logprobs.extend_from_slice(&r.topk_logprobs);
        all.tail_logmass.extend_from_slice(&r.tail_logmass);
    }
    all
}

#[test]
fn an_out_of_vocab_top_k_id_with_a_matching_hash_is_an_error_naming_the_shard() {
    let fx = Fixture::new(Architecture::Llama, 30);
    let a = options(&fx, &fx.teacher, "cache");
    precompute::run(&a, &mut Vec::new()).unwrap();
    let mut m = manifest(&a.out);
    let path = a.out.join(&m.shards[0].path);
    let mut batch = whole_shard(&path);
    batch.topk_ids[5 * 8 + 3] = 325; // vocab 320; position 5 of row 0
    let opts = WriteOptions {
        metadata: schema::footer_metadata(&m),
        ..WriteOptions::default()
    };
    let written = write_shard_atomic(&path, &batch, &opts).unwrap();
    (m.shards[0].bytes, m.shards[0].xxh3) = (written.bytes, written.xxh3);
    m.save_atomic(&a.out.join("manifest.json")).unwrap();

    // One epoch (batches of 2) reads every shard, whatever the order.
    let mut o = distill_options(&fx, &a.out, "run");
    o.steps = Some(m.total_rows() / 2 + 1);
    let err = distill_error(&o);
    assert!(
        err.contains("part-00000.parquet")
            && err.contains("row 0 position 5: top-k id 325 >= vocab_size 320"),
        "{err}"
    );
}

#[test]
fn verify_of_a_manifest_claiming_a_vocab_of_2_pow_40_errors_cleanly() {
    let fx = Fixture::new(Architecture::Llama, 20);
    let a = options(&fx, &fx.teacher, "cache");
    precompute::run(&a, &mut Vec::new()).unwrap();
    let path = a.out.join("manifest.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    value["vocab_size"] = (1u64 << 40).into();
    std::fs::write(&path, value.to_string()).unwrap();
    let out = taidcache(&["verify", a.out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("manifest.json")
            && stderr.contains("field `vocab_size`: 1099511627776 is not a vocabulary size"),
        "{stderr}"
    );
}

#[test]
fn an_out_of_range_eos_token_id_in_the_teachers_config_names_the_field() {
    let fx = Fixture::new(Architecture::Llama, 20);
    let config = fx.teacher.join("config.json");
    let original = std::fs::read_to_string(&config).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&original).unwrap();
    cfg["eos_token_id"] = 999.into();
    std::fs::write(&config, cfg.to_string()).unwrap();
    let err = precompute::run(&options(&fx, &fx.teacher, "cache"), &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json")
            && err.contains(
                "field `eos_token_id`: 999 is not a token id of this model (vocab_size 320)"
            ),
        "{err}"
    );
}
