//! Tests of `inspect` and `verify` on caches written by the real writer.

use std::path::Path;

use super::*;
use crate::cache::testutil::{random_batch, sample_manifest};
use crate::cache::{
    schema, shard_file_name, shard_rel_path, write_shard_atomic, Encoding, Manifest, ShardBatch,
    WriteOptions, MANIFEST_FILE, SHARDS_DIR, WORKER_MANIFESTS_DIR,
};
use crate::error::Error;

const S: usize = 8;
const K: usize = 4;
const VOCAB: u32 = 1000;

/// A cache of 3 shards × 5 rows, written through the real writer; `tamper(shard, batch)`
/// may change a batch before it is written.
fn write_cache(dir: &Path, tamper: impl Fn(u64, &mut ShardBatch)) -> Manifest {
    write_cache_as(dir, Encoding::Plain, tamper)
}

/// [`write_cache`] in `encoding`.
fn write_cache_as(
    dir: &Path,
    encoding: Encoding,
    tamper: impl Fn(u64, &mut ShardBatch),
) -> Manifest {
    std::fs::create_dir_all(dir.join(SHARDS_DIR)).unwrap();
    let mut m = sample_manifest(0, 5);
    m.packing.seq_len = S;
    m.top_k = K;
    m.vocab_size = VOCAB as usize;
    m.teacher.vocab_size = VOCAB as usize;
    m.format_version = encoding.format_version();
    m.value_encoding = encoding.value_encoding().into();
    let opts = WriteOptions {
        row_group_rows: 2,
        metadata: vec![(schema::META_VOCAB_SIZE.into(), VOCAB.to_string())],
        encoding,
        ..WriteOptions::default()
    };
    for i in 0..3u64 {
        let mut b = random_batch(5, S, K, VOCAB, i * 5, 10 + i);
        tamper(i, &mut b);
        let mut e =
            write_shard_atomic(&dir.join(SHARDS_DIR).join(shard_file_name(i)), &b, &opts).unwrap();
        e.index = i;
        e.path = shard_rel_path(i);
        m.shards.push(e);
    }
    m.total_sequences = Some(15);
    m.save_atomic(&dir.join(MANIFEST_FILE)).unwrap();
    m
}

fn verify_err(dir: &Path) -> (Error, String) {
    let mut out = Vec::new();
    let err = verify(dir, &mut out).unwrap_err();
    (err, String::from_utf8(out).unwrap())
}

/// Assert a row-level error on shard `shard`, row `row`, whose message contains `needle`.
fn assert_row_error(err: &Error, shard: u64, row: usize, needle: &str) {
    match err {
        Error::Verify { path, row: r, msg } => {
            assert!(path.ends_with(shard_rel_path(shard)), "{err}");
            assert_eq!(*r, row, "{err}");
            assert!(msg.contains(needle), "expected {needle:?} in: {err}");
        }
        other => panic!("expected Error::Verify, got {other}"),
    }
}

#[test]
fn verify_accepts_a_well_formed_cache_and_prints_one_line_per_shard() {
    let dir = tempfile::tempdir().unwrap();
    write_cache(dir.path(), |_, _| {});
    let mut out = Vec::new();
    let report = verify(dir.path(), &mut out).unwrap();
    assert_eq!(
        report,
        VerifyReport {
            shards: 3,
            sequences: 15,
            tokens: 15 * S as u64,
            bytes: report.bytes
        }
    );
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("shards/part-00000.parquet: ok, 5 sequences, 40 tokens"));
    assert_eq!(lines[3], "ok: 3 shards, 15 sequences, 120 tokens");
}

#[test]
fn verify_catches_a_flipped_byte_by_hash_naming_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_cache(dir.path(), |_, _| {});
    let path = dir.path().join(&m.shards[1].path);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    let (err, out) = verify_err(dir.path());
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Cache { .. })
            && msg.contains("part-00001.parquet")
            && msg.contains("content hash xxh3")
            && msg.contains(&m.shards[1].xxh3),
        "{msg}"
    );
    assert_eq!(out.lines().count(), 1, "shard 0 verified before: {out}");
}

#[test]
fn verify_catches_an_id_at_or_above_vocab_naming_shard_row_and_position() {
    let dir = tempfile::tempdir().unwrap();
    // Shard 2, row 3, position 5, top-k slot 2.
    write_cache(dir.path(), |shard, b| {
        if shard == 2 {
            b.topk_ids[(3 * S + 5) * K + 2] = VOCAB;
        }
    });
    let (err, _) = verify_err(dir.path());
    assert_row_error(
        &err,
        2,
        3,
        "position 5: topk_ids[2] = 1000 >= vocab_size 1000",
    );
}

#[test]
fn verify_catches_non_descending_logprobs() {
    let dir = tempfile::tempdir().unwrap();
    // Shard 0, row 4 (in the last row group), position 0: swap slots 0 and 1.
    write_cache(dir.path(), |shard, b| {
        if shard == 0 {
            b.topk_logprobs.swap(4 * S * K, 4 * S * K + 1);
        }
    });
    let (err, _) = verify_err(dir.path());
    assert_row_error(
        &err,
        0,
        4,
        "position 0: topk_logprobs not descending: [0] =",
    );
}

#[test]
fn verify_catches_a_tail_inconsistent_with_the_top_k_mass() {
    let dir = tempfile::tempdir().unwrap();
    // Shard 1, row 1, position 7: claim a tail mass of 0.5 on top of the real one.
    write_cache(dir.path(), |shard, b| {
        if shard == 1 {
            let p = S + 7;
            let t = &mut b.tail_logmass[p];
            *t = (t.exp() + 0.5).ln();
        }
    });
    let (err, _) = verify_err(dir.path());
    assert_row_error(&err, 1, 1, "position 7: top-k mass");
    assert!(err.to_string().contains("not 1 within"), "{err}");
}

#[test]
fn verify_catches_duplicate_ids_and_a_positive_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_cache(dir.path(), |shard, b| {
        if shard == 0 {
            b.topk_ids[(2 * S + 1) * K + 3] = b.topk_ids[(2 * S + 1) * K];
        }
    });
    let (err, _) = verify_err(dir.path());
    assert_row_error(&err, 0, 2, "position 1: topk_ids[3] =");
    assert!(err.to_string().contains("appears twice"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    write_cache(dir.path(), |shard, b| {
        if shard == 2 {
            b.tail_logmass[0] = 0.01;
        }
    });
    let (err, _) = verify_err(dir.path());
    assert_row_error(&err, 2, 0, "position 0: tail_logmass = 0.01");
}

#[test]
fn verify_accepts_every_encoding_and_catches_a_bad_tail_in_each() {
    for encoding in Encoding::ALL {
        let dir = tempfile::tempdir().unwrap();
        write_cache_as(dir.path(), encoding, |_, _| {});
        let mut out = Vec::new();
        let report = verify(dir.path(), &mut out).unwrap_or_else(|e| panic!("{encoding:?}: {e}"));
        assert_eq!(report.tokens, 15 * S as u64, "{encoding:?}");

        // A tail of 0.3 on top of the real one is beyond any encoding's rounding.
        let dir = tempfile::tempdir().unwrap();
        write_cache_as(dir.path(), encoding, |shard, b| {
            if shard == 2 {
                let p = 3 * S + 1;
                b.tail_logmass[p] = (b.tail_logmass[p].exp() + 0.3).ln();
            }
        });
        let (err, _) = verify_err(dir.path());
        assert_row_error(&err, 2, 3, "position 1: top-k mass");
    }
}

#[test]
fn verify_refuses_an_incomplete_cache_saying_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = write_cache(dir.path(), |_, _| {});
    m.complete = false;
    m.total_sequences = None;
    m.save_atomic(&dir.path().join(MANIFEST_FILE)).unwrap();
    let (err, out) = verify_err(dir.path());
    let msg = err.to_string();
    assert!(
        msg.contains("incomplete (15 sequences so far in 3 shards")
            && msg.contains("precompute was interrupted")
            && msg.contains("resume"),
        "{msg}"
    );
    assert_eq!(
        out.lines().count(),
        3,
        "the shards present are verified: {out}"
    );
}

#[test]
fn inspect_counts_tokens_and_matches_hand_computed_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_cache(dir.path(), |_, _| {});
    let s = inspect(dir.path()).unwrap();
    // Recompute over the same batches in memory.
    let (mut n, mut ent, mut mass) = (0u64, 0.0f64, 0.0f64);
    let mut hist = [0u64; TAIL_DECADES + 1];
    for i in 0..3 {
        let b = random_batch(5, S, K, VOCAB, i * 5, 10 + i);
        for p in 0..b.loss_mask.len() {
            if b.loss_mask[p] {
                n += 1;
                for l in &b.topk_logprobs[p * K..(p + 1) * K] {
                    let l = f64::from(l.to_f32());
                    mass += l.exp();
                    ent -= l.exp() * l;
                }
                let e = f64::from(b.tail_logmass[p]).exp();
                let bin = (0..TAIL_DECADES)
                    .find(|&d| e >= 10f64.powi(-(d as i32) - 1))
                    .unwrap_or(TAIL_DECADES);
                hist[bin] += 1;
            }
        }
    }
    assert_eq!(
        (s.sequences, s.tokens, s.loss_tokens, s.shards),
        (15, 120, n, 3)
    );
    assert_eq!(s.bytes_on_disk, m.total_bytes());
    assert_eq!(s.raw_bytes, 120 * (K as u64 * 6 + 9));
    assert!((s.compression_ratio - s.raw_bytes as f64 / s.bytes_on_disk as f64).abs() < 1e-12);
    assert!(
        (s.mean_topk_entropy.unwrap() - ent / n as f64).abs() < 1e-9,
        "{s:?} vs {}",
        ent / n as f64
    );
    assert!((s.mean_topk_mass.unwrap() - mass / n as f64).abs() < 1e-9);
    let found: Vec<u64> = s.tail_mass_histogram.iter().map(|b| b.count).collect();
    assert_eq!(found, hist);
    assert_eq!(found.iter().sum::<u64>(), n);

    let mut json = Vec::new();
    write_summary(&s, true, &mut json).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["loss_tokens"], n);
    assert_eq!(v["teacher"]["model_type"], "llama");
    let mut table = Vec::new();
    write_summary(&s, false, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("tokens (loss)        120 ("), "{table}");
    assert!(table.contains(">= 1e-1"), "{table}");
}

#[test]
fn tail_decades_bin_by_powers_of_ten() {
    let bin = |mass: f64| tail_decade(mass.ln() as f32);
    assert_eq!(bin(0.5), 0);
    assert_eq!(bin(0.1001), 0);
    assert_eq!(bin(0.099), 1);
    assert_eq!(bin(0.0123), 1);
    assert_eq!(bin(0.00999), 2);
    assert_eq!(bin(2e-8), 7);
    assert_eq!(bin(5e-9), 8);
    assert_eq!(tail_decade(f32::NEG_INFINITY), 8);
    assert_eq!(decade_label(1), "1e-2..1e-1");
    assert_eq!(decade_label(8), "< 1e-8");
}

#[test]
fn inspect_without_manifest_says_to_merge_when_workers_exist() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(WORKER_MANIFESTS_DIR)).unwrap();
    let err = inspect(dir.path()).unwrap_err().to_string();
    assert!(err.contains("taidcache merge"), "{err}");
}
