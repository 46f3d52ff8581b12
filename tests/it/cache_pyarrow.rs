//! Shards written by taidcache are read by plain pyarrow with the exact v1 types, and the
//! manifest validates against `schemas/v1/manifest.schema.json` (`tests/python/check_cache.py`).
//!
//! Needs `python3` with `pyarrow` and `jsonschema` (`make test` installs them).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use half::f16;
use taidcache::cache::{
    schema, shard_file_name, shard_rel_path, write_shard_atomic, CorpusFile, CorpusInfo, Manifest,
    PackingInfo, ShardBatch, TeacherInfo, WriteOptions, FORMAT_VERSION, MANIFEST_FILE, SHARDS_DIR,
};

const SEQ_LEN: usize = 10;
const K: usize = 4;
const VOCAB: u32 = 97;

/// Deterministic, well-formed rows: distinct ids, descending log-probs, consistent tail.
fn batch(first_seq_id: u64, rows: usize) -> ShardBatch {
    let mut b = ShardBatch::new(SEQ_LEN, K);
    for r in 0..rows {
        let seq = first_seq_id + r as u64;
        b.seq_ids.push(seq);
        for i in 0..SEQ_LEN {
            let t = (seq as u32 * 31 + i as u32 * 7) % VOCAB;
            b.input_ids.push(t);
            b.loss_mask.push(i + 1 < SEQ_LEN);
            let mut mass = 0.0f64;
            for j in 0..K {
                b.topk_ids.push((t + 1 + j as u32 * 13) % VOCAB);
                let lp = f16::from_f32(-0.5 - j as f32 - (i % 3) as f32 * 0.25);
                mass += f64::from(lp.to_f32()).exp();
                b.topk_logprobs.push(lp);
            }
            b.tail_logmass.push((1.0 - mass).ln() as f32);
        }
    }
    b
}

fn write_cache(cache: &Path) -> Manifest {
    std::fs::create_dir_all(cache.join(SHARDS_DIR)).unwrap();
    let opts = WriteOptions {
        row_group_rows: 3,
        metadata: vec![(schema::META_VOCAB_SIZE.into(), VOCAB.to_string())],
        ..WriteOptions::default()
    };
    let mut shards = Vec::new();
    let mut next = 0u64;
    for (index, rows) in [(0u64, 7usize), (1, 5)] {
        let path = cache.join(SHARDS_DIR).join(shard_file_name(index));
        let mut entry = write_shard_atomic(&path, &batch(next, rows), &opts).unwrap();
        entry.index = index;
        entry.path = shard_rel_path(index);
        next = entry.seq_id_end;
        shards.push(entry);
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        taidcache_version: env!("CARGO_PKG_VERSION").into(),
        teacher: TeacherInfo {
            model_type: "llama".into(),
            architecture: "LlamaForCausalLM".into(),
            vocab_size: VOCAB as usize,
            config_sha256: "1".repeat(64),
            safetensors_header_sha256: BTreeMap::from([(
                "model.safetensors".into(),
                "2".repeat(64),
            )]),
            weights_xxh3: Some("5".repeat(32)),
            source: "tests/teacher".into(),
        },
        tokenizer_sha256: "3".repeat(64),
        corpus: CorpusInfo {
            files: vec![CorpusFile {
                path: "corpus.jsonl".into(),
                format: "jsonl".into(),
                bytes: 4096,
                xxh3: "4".repeat(32),
            }],
            text_field: "text".into(),
            text_split: "document".into(),
        },
        packing: PackingInfo {
            seq_len: SEQ_LEN,
            eos_id: 1,
            pad_id: 0,
            add_special_tokens: false,
            shard_rows: 7,
        },
        top_k: K,
        vocab_size: VOCAB as usize,
        dtype: "f32".into(),
        temperature: 1.0,
        value_encoding: "f16".into(),
        tail_draws: 0,
        worker: None,
        complete: true,
        total_sequences: Some(next),
        shards,
        import: None,
    };
    manifest.save_atomic(&cache.join(MANIFEST_FILE)).unwrap();
    manifest
}

fn check_cache(cache: &Path) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_cache.py");
    Command::new("python3")
        .arg(&script)
        .arg(cache)
        .arg("--require-jsonschema")
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()))
}

#[test]
fn pyarrow_reads_shards_with_exact_v1_types_and_manifest_matches_json_schema() {
    let dir = tempfile::tempdir().unwrap();
    write_cache(dir.path());
    let out = check_cache(dir.path());
    assert!(
        out.status.success(),
        "check_cache.py failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ok: 2 shards, 12 sequences"), "{stdout}");
}

#[test]
fn check_script_rejects_a_manifest_outside_the_json_schema() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_cache(dir.path());
    let mut value = serde_json::to_value(&manifest).unwrap();
    value["shards"][1]["path"] = "../elsewhere/part-00001.parquet".into();
    std::fs::write(dir.path().join(MANIFEST_FILE), value.to_string()).unwrap();
    let out = check_cache(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("shards/1/path"),
        "expected a schema failure at shards/1/path, got {}:\n{stderr}",
        out.status
    );
}
