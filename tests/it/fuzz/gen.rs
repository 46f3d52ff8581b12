//! The inputs of the fuzz targets, made from code: the valid inputs that the mutators start
//! from, and the regression corpus `tests/fuzz-corpus/` (each case a broken input of the issue's
//! list or a panic the fuzzer found). `fuzz::regression_corpus_matches_its_generator` checks
//! that the committed files are what this module makes, and rewrites them with
//! `TAIDCACHE_FUZZ_WRITE_CORPUS=1`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, ListArray, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use taidcache::cache::manifest::Manifest;
use taidcache::cache::{
    schema, shard_file_name, shard_rel_path, write_shard_atomic, Codec, Encoding, ShardBatch,
    ShardEntry, WriteOptions, MANIFEST_FILE, SHARDS_DIR,
};
use taidcache::hash::xxh3_hex;

use super::engine::Files;

/// Positions per row, top-k and vocabulary of the fuzzed caches: tiny, so an execution takes
/// a millisecond.
pub const S: usize = 8;
pub const K: usize = 4;
pub const VOCAB: usize = 64;
/// Rows per shard and shards per cache; row groups of 2 rows (so a shard has two).
pub const ROWS: usize = 3;
pub const SHARDS: usize = 2;

/// The valid rows of shard `i`: LLM-like top-k (real selection, consistent tail), seq ids
/// `i*ROWS..`.
pub fn valid_batch(i: usize) -> ShardBatch {
    let mut b = taidcache::testing::llm_like_batch(ROWS, S, K, VOCAB, 100 + i as u64);
    for (r, id) in b.seq_ids.iter_mut().enumerate() {
        *id = (i * ROWS + r) as u64;
    }
    b
}

/// The manifest of a complete cache of `SHARDS` shards in `encoding` (entries filled by
/// [`set_entries`]).
pub fn base_manifest(encoding: Encoding) -> Manifest {
    let mut m = taidcache::testing::sample_manifest(0, ROWS as u64);
    m.packing.seq_len = S;
    m.top_k = K;
    m.vocab_size = VOCAB;
    m.teacher.vocab_size = VOCAB;
    m.format_version = encoding.format_version();
    m.value_encoding = encoding.value_encoding().into();
    m.total_sequences = Some((SHARDS * ROWS) as u64);
    m.complete = true;
    m
}

/// A shard written by the real writer, as bytes.
pub fn written_shard(encoding: Encoding, m: &Manifest, b: &ShardBatch) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard.parquet");
    let opts = WriteOptions {
        row_group_rows: 2,
        metadata: schema::footer_metadata(m),
        encoding,
        ..WriteOptions::default()
    };
    write_shard_atomic(&path, b, &opts).unwrap();
    std::fs::read(&path).unwrap()
}

/// The footer key-value pairs the writer gives a shard of `m` in `encoding`.
pub fn footer(encoding: Encoding, m: &Manifest) -> Vec<(String, String)> {
    let mut kv = vec![
        (
            schema::META_FORMAT_VERSION.to_string(),
            encoding.format_version().to_string(),
        ),
        (schema::META_TOP_K.to_string(), m.top_k.to_string()),
        (
            schema::META_SEQ_LEN.to_string(),
            m.packing.seq_len.to_string(),
        ),
    ];
    kv.extend(
        Codec::for_writing(encoding)
            .footer()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    kv.extend(schema::footer_metadata(m));
    kv
}

/// Record batches (row groups of 2 rows) as one Parquet file with footer `kv`: the way to write a
/// shard the writer would refuse (wrong list lengths, wrong footer).
pub fn raw_shard(batches: &[RecordBatch], kv: &[(String, String)]) -> Vec<u8> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
        .set_key_value_metadata(Some(
            kv.iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .collect(),
        ))
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batches[0].schema(), Some(props)).unwrap();
    for b in batches {
        w.write(b).unwrap();
        w.flush().unwrap();
    }
    w.close().unwrap();
    out
}

/// `b` as record batches of 2 rows in `encoding`.
pub fn record_batches(b: &ShardBatch, encoding: Encoding) -> Vec<RecordBatch> {
    (0..b.rows())
        .step_by(2)
        .map(|r| {
            b.to_record_batch_for(r..(r + 2).min(b.rows()), encoding)
                .unwrap()
        })
        .collect()
}

/// Fill `m.shards` from the shard files' bytes (sizes, hashes; seq ids from their order), so the
/// manifest matches whatever the shards hold and the hash check does not hide a broken value.
pub fn set_entries(m: &mut Manifest, shards: &[Vec<u8>]) {
    m.shards = shards
        .iter()
        .enumerate()
        .map(|(i, bytes)| ShardEntry {
            index: i as u64,
            path: shard_rel_path(i as u64),
            rows: ROWS as u64,
            tokens: (ROWS * S) as u64,
            bytes: bytes.len() as u64,
            seq_id_start: (i * ROWS) as u64,
            seq_id_end: ((i + 1) * ROWS) as u64,
            xxh3: xxh3_hex(bytes),
        })
        .collect();
}

/// A cache directory as files: `manifest.json` and the shards.
pub fn cache_files(m: &Manifest, shards: &[Vec<u8>]) -> Files {
    let mut files = Files::new();
    files.insert(MANIFEST_FILE.into(), manifest_bytes(m));
    for (i, bytes) in shards.iter().enumerate() {
        files.insert(
            format!("{SHARDS_DIR}/{}", shard_file_name(i as u64)),
            bytes.clone(),
        );
    }
    files
}

pub fn manifest_bytes(m: &Manifest) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(m).unwrap();
    bytes.push(b'\n');
    bytes
}

/// A valid complete cache in `encoding`: (manifest, shard bytes).
pub fn valid_cache(encoding: Encoding) -> (Manifest, Vec<Vec<u8>>) {
    let mut m = base_manifest(encoding);
    let shards: Vec<Vec<u8>> = (0..SHARDS)
        .map(|i| written_shard(encoding, &m, &valid_batch(i)))
        .collect();
    set_entries(&mut m, &shards);
    (m, shards)
}

/// A cache whose shard 1 holds `tamper`ed rows (written by the real writer), with the manifest's
/// hashes and sizes matching.
fn tampered_cache(encoding: Encoding, tamper: impl Fn(&mut ShardBatch)) -> Files {
    let mut m = base_manifest(encoding);
    let shards: Vec<Vec<u8>> = (0..SHARDS)
        .map(|i| {
            let mut b = valid_batch(i);
            if i == 1 {
                tamper(&mut b);
                // What the writer refuses (seq ids not consecutive) is written raw.
                return raw_shard(&record_batches(&b, encoding), &footer(encoding, &m));
            }
            written_shard(encoding, &m, &b)
        })
        .collect();
    set_entries(&mut m, &shards);
    cache_files(&m, &shards)
}

/// A valid plain cache whose shard 0 is replaced by `f(bytes)`, manifest entry matching.
fn rewritten_shard0(f: impl Fn(Vec<u8>) -> Vec<u8>) -> Files {
    let (mut m, mut shards) = valid_cache(Encoding::Plain);
    shards[0] = f(shards[0].clone());
    set_entries(&mut m, &shards);
    cache_files(&m, &shards)
}

/// A valid plain cache whose shard 0 is rewritten raw from `batches(rows)` with footer
/// `kv(footer)`, manifest entry matching.
fn raw_shard0(
    encoding: Encoding,
    batches: impl Fn(Vec<RecordBatch>) -> Vec<RecordBatch>,
    kv: impl Fn(Vec<(String, String)>) -> Vec<(String, String)>,
) -> Files {
    let (mut m, mut shards) = valid_cache(encoding);
    shards[0] = raw_shard(
        &batches(record_batches(&valid_batch(0), encoding)),
        &kv(footer(encoding, &m)),
    );
    set_entries(&mut m, &shards);
    cache_files(&m, &shards)
}

/// Column `col` of `b` with the list offsets `offsets` (the values kept).
pub fn with_offsets(b: &RecordBatch, col: usize, offsets: Vec<i32>) -> Option<RecordBatch> {
    let list = b.column(col).as_any().downcast_ref::<ListArray>()?;
    let monotonic = offsets.first() == Some(&0) && offsets.windows(2).all(|w| w[0] <= w[1]);
    if !monotonic || offsets.len() != list.len() + 1 {
        return None;
    }
    let field = match b.schema().field(col).data_type() {
        DataType::List(f) => f.clone(),
        _ => return None,
    };
    let list = ListArray::try_new(
        field,
        OffsetBuffer::new(offsets.into()),
        list.values().clone(),
        None,
    )
    .ok()?;
    let mut cols: Vec<ArrayRef> = b.columns().to_vec();
    cols[col] = Arc::new(list);
    RecordBatch::try_new(b.schema(), cols).ok()
}

/// The list offsets of column `col` of `b`.
pub fn offsets(b: &RecordBatch, col: usize) -> Vec<i32> {
    b.column(col)
        .as_any()
        .downcast_ref::<ListArray>()
        .map(|l| l.offsets().to_vec())
        .unwrap_or_default()
}

/// Replace the footer value of `key` (or add it).
fn set_kv(mut kv: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    kv.retain(|(k, _)| k != key);
    kv.insert(0, (key.to_string(), value.to_string()));
    kv
}

/// The valid plain cache's manifest as JSON, edited by `f`.
fn manifest_json(f: impl Fn(&mut serde_json::Value)) -> Files {
    let (m, _) = valid_cache(Encoding::Plain);
    let mut v = serde_json::to_value(&m).unwrap();
    f(&mut v);
    let mut bytes = serde_json::to_vec_pretty(&v).unwrap();
    bytes.push(b'\n');
    Files::from([(MANIFEST_FILE.to_string(), bytes)])
}

/// The valid plain cache's manifest as text, `from` replaced by `to` (for what JSON values
/// cannot hold: NaN, 1e999).
fn manifest_text(from: &str, to: &str) -> Files {
    let (m, _) = valid_cache(Encoding::Plain);
    let text = String::from_utf8(manifest_bytes(&m)).unwrap();
    assert!(text.contains(from), "{from} not in the manifest");
    Files::from([(
        MANIFEST_FILE.to_string(),
        text.replacen(from, to, 1).into_bytes(),
    )])
}

/// The regression corpus of the manifest target: each case a `manifest.json` replayed over the
/// shards of the valid plain cache.
pub fn manifest_corpus() -> BTreeMap<String, Files> {
    let mut c = BTreeMap::new();
    let mut add = |name: &str, files: Files| {
        c.insert(name.to_string(), files);
    };
    add("valid", manifest_json(|_| {}));
    // Issue #19 item 11: verify allocated a bitset of vocab_size bits (SIGABRT at 2^40).
    add(
        "vocab-size-2-pow-40",
        manifest_json(|v| {
            v["vocab_size"] = (1u64 << 40).into();
            v["teacher"]["vocab_size"] = (1u64 << 40).into();
        }),
    );
    add(
        "vocab-size-u64-max",
        manifest_json(|v| v["vocab_size"] = u64::MAX.into()),
    );
    // Item 6: shard 0 listed twice, hashes consistent.
    add(
        "shard-0-listed-twice",
        manifest_json(|v| {
            let mut second = v["shards"][0].clone();
            second["index"] = 1.into();
            v["shards"][1] = second;
        }),
    );
    add(
        "temperature-nan",
        manifest_text("\"temperature\": 1.0", "\"temperature\": NaN"),
    );
    add(
        "temperature-inf",
        manifest_text("\"temperature\": 1.0", "\"temperature\": 1e999"),
    );
    add(
        "temperature-string-inf",
        manifest_json(|v| v["temperature"] = "inf".into()),
    );
    add("top-k-zero", manifest_json(|v| v["top_k"] = 0.into()));
    add(
        "top-k-above-vocab",
        manifest_json(|v| v["top_k"] = (VOCAB + 1).into()),
    );
    add(
        "seq-len-zero",
        manifest_json(|v| v["packing"]["seq_len"] = 0.into()),
    );
    add(
        "tokens-overflow-u64",
        manifest_json(|v| {
            v["packing"]["seq_len"] = (1u64 << 62).into();
            v["shards"][0]["tokens"] = 0.into();
        }),
    );
    add(
        "rows-u64-max",
        manifest_json(|v| {
            v["shards"][1]["rows"] = u64::MAX.into();
            v["shards"][1]["seq_id_start"] = 0.into();
            v["shards"][1]["seq_id_end"] = u64::MAX.into();
            v["shards"][1]["tokens"] = (u64::MAX - (u64::MAX % S as u64)).into();
        }),
    );
    add(
        "total-rows-overflow",
        manifest_json(|v| {
            for i in 0..2 {
                let rows = u64::MAX / (S as u64) - 1;
                v["shards"][i]["rows"] = rows.into();
                v["shards"][i]["seq_id_start"] = 0.into();
                v["shards"][i]["seq_id_end"] = rows.into();
                v["shards"][i]["tokens"] = (rows * S as u64).into();
            }
        }),
    );
    add(
        "shard-path-parent",
        manifest_json(|v| v["shards"][0]["path"] = "../part-00000.parquet".into()),
    );
    add(
        "shard-path-absolute",
        manifest_json(|v| v["shards"][0]["path"] = "/etc/passwd".into()),
    );
    add(
        "shard-path-directory",
        manifest_json(|v| v["shards"][0]["path"] = "shards".into()),
    );
    add(
        "shard-path-empty",
        manifest_json(|v| v["shards"][0]["path"] = "".into()),
    );
    add(
        "worker-count-zero",
        manifest_json(|v| v["worker"] = serde_json::json!({"index": 0, "count": 0})),
    );
    add(
        "format-version-99",
        manifest_json(|v| v["format_version"] = 99.into()),
    );
    add(
        "format-version-negative",
        manifest_json(|v| v["format_version"] = (-1).into()),
    );
    add(
        "total-sequences-short",
        manifest_json(|v| v["total_sequences"] = 1.into()),
    );
    add(
        "incomplete",
        manifest_json(|v| v["complete"] = false.into()),
    );
    add(
        "no-shards",
        manifest_json(|v| v["shards"] = serde_json::json!([])),
    );
    add("unknown-field", manifest_json(|v| v["extra"] = 1.into()));
    add(
        "missing-field",
        manifest_json(|v| {
            v.as_object_mut().unwrap().remove("packing");
        }),
    );
    add(
        "not-an-object",
        Files::from([(MANIFEST_FILE.to_string(), b"[1, 2, 3]\n".to_vec())]),
    );
    add(
        "empty-file",
        Files::from([(MANIFEST_FILE.to_string(), Vec::new())]),
    );
    add(
        "deep-nesting",
        Files::from([(
            MANIFEST_FILE.to_string(),
            format!(
                "{{\"format_version\": 1, \"x\": {}{}}}",
                "[".repeat(5000),
                "]".repeat(5000)
            )
            .into_bytes(),
        )]),
    );
    c
}

/// The regression corpus of the shard target: each case a whole cache directory whose
/// manifest matches its shards' sizes and hashes (unless the case is about that).
pub fn shard_corpus() -> BTreeMap<String, Files> {
    let mut c = BTreeMap::new();
    let mut add = |name: &str, files: Files| {
        c.insert(name.to_string(), files);
    };
    for encoding in Encoding::ALL {
        let (m, shards) = valid_cache(encoding);
        add(
            &format!("valid-{}", encoding.name()),
            cache_files(&m, &shards),
        );
    }
    // Issue #19 item 10: a top-k id >= vocab with the hash consistent (distill panicked).
    add(
        "topk-id-at-vocab",
        tampered_cache(Encoding::Plain, |b| b.topk_ids[K * 3 + 1] = VOCAB as u32),
    );
    add(
        "topk-id-u32-max",
        tampered_cache(Encoding::Plain, |b| b.topk_ids[K * 5] = u32::MAX),
    );
    add(
        "topk-id-at-vocab-steps",
        tampered_cache(Encoding::Steps, |b| b.topk_ids[K * 2] = VOCAB as u32 + 7),
    );
    add(
        "topk-id-at-vocab-compact",
        tampered_cache(Encoding::Compact, |b| b.topk_ids[K * 2] = VOCAB as u32 + 7),
    );
    add(
        "input-id-at-vocab",
        tampered_cache(Encoding::Plain, |b| b.input_ids[4] = VOCAB as u32),
    );
    add(
        "logprob-nan",
        tampered_cache(Encoding::Plain, |b| {
            b.topk_logprobs[K * 2 + 1] = half::f16::NAN
        }),
    );
    add(
        "logprob-positive-inf",
        tampered_cache(Encoding::Plain, |b| {
            b.topk_logprobs[0] = half::f16::INFINITY
        }),
    );
    add(
        "tail-nan",
        tampered_cache(Encoding::Plain, |b| b.tail_logmass[3] = f32::NAN),
    );
    add(
        "tail-positive",
        tampered_cache(Encoding::Plain, |b| b.tail_logmass[3] = 0.5),
    );
    add(
        "topk-id-duplicated",
        tampered_cache(Encoding::Plain, |b| b.topk_ids[1] = b.topk_ids[0]),
    );
    add(
        "seq-id-skips",
        tampered_cache(Encoding::Plain, |b| b.seq_ids[2] += 1),
    );
    add(
        "truncated-shard-hash-consistent",
        rewritten_shard0(|mut b| {
            b.truncate(b.len() / 2);
            b
        }),
    );
    add(
        "truncated-footer-magic",
        rewritten_shard0(|mut b| {
            b.truncate(b.len() - 2);
            b
        }),
    );
    add("empty-shard-file", rewritten_shard0(|_| Vec::new()));
    add(
        "flipped-page-byte-hash-consistent",
        rewritten_shard0(|mut b| {
            // Inside the first column chunk's pages (after the 4-byte magic and page header).
            b[40] ^= 0x20;
            b
        }),
    );
    add("shard-hash-stale", {
        let (m, mut shards) = valid_cache(Encoding::Plain);
        shards[1][60] ^= 1;
        cache_files(&m, &shards)
    });
    add(
        "input-ids-wrong-lengths",
        raw_shard0(
            Encoding::Plain,
            |bs| {
                bs.iter()
                    .map(|b| {
                        let mut o = offsets(b, 1);
                        if o.len() > 2 {
                            o[1] += 1;
                        }
                        with_offsets(b, 1, o).unwrap()
                    })
                    .collect()
            },
            |kv| kv,
        ),
    );
    add(
        "tail-list-short",
        raw_shard0(
            Encoding::Plain,
            |bs| {
                bs.iter()
                    .map(|b| {
                        let mut o = offsets(b, 5);
                        *o.last_mut().unwrap() -= 1;
                        with_offsets(b, 5, o).unwrap()
                    })
                    .collect()
            },
            |kv| kv,
        ),
    );
    add(
        "footer-top-k-mismatch",
        raw_shard0(
            Encoding::Plain,
            |b| b,
            |kv| set_kv(kv, schema::META_TOP_K, "99"),
        ),
    );
    add(
        "footer-seq-len-not-a-number",
        raw_shard0(
            Encoding::Plain,
            |b| b,
            |kv| set_kv(kv, schema::META_SEQ_LEN, "eight"),
        ),
    );
    add(
        "footer-seq-len-huge",
        raw_shard0(
            Encoding::Plain,
            |b| b,
            |kv| set_kv(kv, schema::META_SEQ_LEN, "18446744073709551615"),
        ),
    );
    add(
        "footer-format-version-99",
        raw_shard0(
            Encoding::Plain,
            |b| b,
            |kv| set_kv(kv, schema::META_FORMAT_VERSION, "99"),
        ),
    );
    add(
        "footer-step-nan",
        raw_shard0(
            Encoding::Steps,
            |b| b,
            |kv| set_kv(kv, schema::META_LOGPROB_STEP, "NaN"),
        ),
    );
    add(
        "footer-levels-garbage",
        raw_shard0(
            Encoding::Compact,
            |b| b,
            |kv| set_kv(kv, schema::META_LOGPROB_LEVELS, "[0, -1, 1e999]"),
        ),
    );
    c
}

/// The valid corpus files: JSONL (text and token ids, nulls, an empty document), text with blank
/// lines, Parquet with a text and a token-id column.
pub fn valid_corpus() -> Files {
    let jsonl = concat!(
        "{\"text\": \"the teacher distills knowledge\", \"ids\": [1, 2, 3]}\n",
        "{\"id\": 7, \"text\": \"caf\\u00e9 \\ud83d\\ude00 emoji\", \"ids\": [0]}\n",
        "{\"text\": null, \"ids\": null}\n",
        "\n",
        "{\"text\": \"\", \"ids\": []}\n",
        "{\"meta\": {\"a\": [1, {\"b\": 2}]}, \"text\": \"nested before\", \"ids\": [4294967295]}\n",
    );
    let txt = "First block line one.\nline two.\n\n\n  \nSecond block.\r\n\r\nThird.\n";
    Files::from([
        ("a.jsonl".to_string(), jsonl.as_bytes().to_vec()),
        ("b.txt".to_string(), txt.as_bytes().to_vec()),
        (
            "c.parquet".to_string(),
            corpus_parquet(
                &[Some("one doc"), None, Some(""), Some("two")],
                &[Some(vec![1, 2]), None, Some(vec![]), Some(vec![5])],
            ),
        ),
    ])
}

/// A Parquet corpus file: a `text` string column and an `ids` list<int64> column.
pub fn corpus_parquet(texts: &[Option<&str>], ids: &[Option<Vec<i64>>]) -> Vec<u8> {
    let text = StringArray::from(texts.to_vec());
    let ids =
        ListArray::from_iter_primitive::<arrow::datatypes::Int64Type, _, _>(ids.iter().map(|r| {
            r.as_ref()
                .map(|v| v.iter().map(|&x| Some(x)).collect::<Vec<_>>())
        }));
    let schema = Schema::new(vec![
        Field::new("text", DataType::Utf8, true),
        Field::new("ids", ids.data_type().clone(), true),
    ]);
    let batch =
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(text), Arc::new(ids)]).unwrap();
    raw_parquet(&batch)
}

fn raw_parquet(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    out
}

/// The regression corpus of the corpus target: each case a directory of corpus files, read with
/// `--text-field text` and `ids` and both `--text-split` modes.
pub fn corpus_corpus() -> BTreeMap<String, Files> {
    let mut c = BTreeMap::new();
    let mut add = |name: &str, file: &str, bytes: Vec<u8>| {
        c.insert(name.to_string(), Files::from([(file.to_string(), bytes)]));
    };
    let valid = valid_corpus();
    for (name, bytes) in &valid {
        add(
            &format!("valid-{}", name.replace('.', "-")),
            name,
            bytes.clone(),
        );
    }
    // A line longer than the 64 KiB read buffer.
    add(
        "jsonl-huge-line",
        "a.jsonl",
        format!(
            "{{\"text\": \"{}\"}}\n{{\"text\": \"after\"}}\n",
            "a".repeat(70_000)
        )
        .into_bytes(),
    );
    add(
        "jsonl-invalid-json",
        "a.jsonl",
        b"{\"text\": \"unterminated\n{\"text\": 1}\n".to_vec(),
    );
    add(
        "jsonl-invalid-utf8",
        "a.jsonl",
        b"{\"text\": \"\xff\xfe bad\"}\n".to_vec(),
    );
    add(
        "jsonl-lone-surrogate",
        "a.jsonl",
        b"{\"text\": \"\\ud800\"}\n".to_vec(),
    );
    add(
        "jsonl-not-an-object",
        "a.jsonl",
        b"[1, 2]\n\"text\"\n".to_vec(),
    );
    add(
        "jsonl-deep-nesting",
        "a.jsonl",
        format!(
            "{{\"x\": {}{}, \"text\": \"t\"}}\n",
            "[".repeat(2_000),
            "]".repeat(2_000)
        )
        .into_bytes(),
    );
    add(
        "jsonl-ids-out-of-range",
        "a.jsonl",
        b"{\"ids\": [1, 4294967296]}\n{\"ids\": [-1]}\n{\"ids\": [1.5]}\n{\"ids\": [1e999]}\n{\"ids\": [18446744073709551616]}\n".to_vec(),
    );
    add(
        "jsonl-duplicate-field",
        "a.jsonl",
        b"{\"text\": \"a\", \"text\": \"b\"}\n".to_vec(),
    );
    add(
        "jsonl-nul-bytes",
        "a.jsonl",
        b"{\"text\": \"a\"}\x00\n\x00\x00\n".to_vec(),
    );
    add("jsonl-bom-only", "a.jsonl", b"\xEF\xBB\xBF".to_vec());
    add(
        "txt-invalid-utf8",
        "b.txt",
        b"fine line\n\nbad \xc3\x28 line\n".to_vec(),
    );
    add(
        "txt-bom-and-blank-lines-only",
        "b.txt",
        b"\xEF\xBB\xBF\n\n \r\n\t\n".to_vec(),
    );
    add("txt-empty", "b.txt", Vec::new());
    add("parquet-truncated", "c.parquet", {
        let mut b = valid["c.parquet"].clone();
        b.truncate(b.len() / 2);
        b
    });
    add("parquet-empty", "c.parquet", Vec::new());
    add(
        "parquet-ids-out-of-range",
        "c.parquet",
        corpus_parquet(
            &[Some("a"), Some("b"), Some("c")],
            &[
                Some(vec![-1]),
                Some(vec![1 << 40]),
                Some(vec![i64::MIN, i64::MAX]),
            ],
        ),
    );
    add("parquet-text-is-a-float", "c.parquet", {
        let schema = Schema::new(vec![
            Field::new("text", DataType::Float64, true),
            Field::new("ids", DataType::Int64, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Float64Array::from(vec![f64::NAN, 1.0])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        raw_parquet(&batch)
    });
    c
}

/// Every regression corpus by target.
pub fn regression_corpus() -> BTreeMap<&'static str, BTreeMap<String, Files>> {
    BTreeMap::from([
        ("manifest", manifest_corpus()),
        ("shard", shard_corpus()),
        ("corpus", corpus_corpus()),
    ])
}
