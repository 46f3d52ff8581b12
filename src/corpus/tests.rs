//! Tests of the readers, file listing and the whole stage. Packer tests are in `pack.rs`,
//! tokenizer-helper tests in `testing.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, LargeStringArray, ListArray, RecordBatch, StringArray};
use arrow::datatypes::{Int64Type, UInt16Type};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::testing::{sample_texts, sample_tokenizer};
use super::*;

fn text(s: &str) -> Document {
    Document::Text(s.to_string())
}

fn opts() -> CorpusOptions {
    CorpusOptions::default()
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, contents).unwrap();
    path
}

fn read_all(files: &[PathBuf], opts: &CorpusOptions) -> Vec<Document> {
    DocumentReader::new(files, opts)
        .unwrap()
        .collect::<Result<Vec<_>>>()
        .unwrap()
}

/// The first error of reading `files`, at construction or while iterating, as displayed.
fn first_error(files: &[PathBuf], opts: &CorpusOptions) -> String {
    match DocumentReader::new(files, opts) {
        Err(e) => e.to_string(),
        Ok(reader) => {
            let mut n = 0;
            for doc in reader {
                match doc {
                    Ok(_) => n += 1,
                    Err(e) => return e.to_string(),
                }
            }
            panic!("no error after {n} documents")
        }
    }
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>, compression: Compression) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(700))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Formats and file lists

#[test]
fn format_is_detected_from_the_extension_case_insensitively() {
    for (name, format) in [
        ("a.jsonl", CorpusFormat::Jsonl),
        ("a.JSON", CorpusFormat::Jsonl),
        ("a.ndjson", CorpusFormat::Jsonl),
        ("a.txt", CorpusFormat::Text),
        ("a.text", CorpusFormat::Text),
        ("a.md", CorpusFormat::Text),
        ("a.Parquet", CorpusFormat::Parquet),
    ] {
        assert_eq!(
            CorpusFormat::from_path(Path::new(name)).unwrap(),
            format,
            "{name}"
        );
    }
    let err = CorpusFormat::from_path(Path::new("data/x.csv"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("data/x.csv") && err.contains(".csv"), "{err}");
    assert!(
        err.contains(".jsonl") && err.contains(".txt") && err.contains(".parquet"),
        "{err}"
    );
    let err = CorpusFormat::from_path(Path::new("data/noext"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data/noext") && err.contains(".parquet"),
        "{err}"
    );
}

#[test]
fn text_split_serializes_in_kebab_case() {
    assert_eq!(
        serde_json::to_string(&TextSplit::BlankLine).unwrap(),
        "\"blank-line\""
    );
    assert_eq!(
        serde_json::from_str::<TextSplit>("\"file\"").unwrap(),
        TextSplit::File
    );
    assert_eq!(TextSplit::default(), TextSplit::File);
    assert_eq!(CorpusOptions::default().text_field, "text");
}

#[test]
fn directory_expands_to_its_files_sorted_by_name_without_hidden_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("corpus");
    write(&d, "b.jsonl", "{\"text\":\"b\"}\n");
    write(&d, "a.txt", "a");
    write(&d, ".hidden.jsonl", "not json");
    write(&d, ".git/config", "x");
    write(&d, "c/d.txt", "d");
    let single = write(dir.path(), "z.txt", "z");
    let files = expand_inputs(&[d.clone(), single.clone()]).unwrap();
    assert_eq!(
        files,
        vec![
            d.join("a.txt"),
            d.join("b.jsonl"),
            d.join("c/d.txt"),
            single.clone()
        ]
    );
    let docs = read_all(&[d.clone(), single], &opts());
    assert_eq!(docs, vec![text("a"), text("b"), text("d"), text("z")]);

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    write(&empty, ".only-hidden.txt", "x");
    let err = expand_inputs(&[empty]).unwrap_err().to_string();
    assert!(
        err.contains("empty") && err.contains("no corpus files"),
        "{err}"
    );
}

#[test]
fn describe_files_reports_format_size_and_xxh3_of_each_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.jsonl", "{\"text\":\"hello\"}\n");
    let b = write(dir.path(), "sub/b.md", "# title\n\nbody\n");
    let infos = describe_files(&[a.clone(), dir.path().join("sub")]).unwrap();
    assert_eq!(infos.len(), 2);
    assert_eq!(
        infos[0],
        CorpusFileInfo {
            path: a.display().to_string(),
            format: "jsonl".into(),
            bytes: 17,
            xxh3: crate::hash::xxh3_hex(b"{\"text\":\"hello\"}\n"),
        }
    );
    assert_eq!(infos[1].path, b.display().to_string());
    assert_eq!(infos[1].format, "text");
    assert_eq!(infos[1].bytes, 14);
    assert_eq!(infos[1].xxh3, crate::hash::xxh3_file(&b).unwrap());
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let err = describe_files(std::slice::from_ref(&missing)).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.jsonl"), "{err}");
    let err = DocumentReader::new(&[missing], &opts()).err().unwrap();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("nope.jsonl"));
}

#[test]
fn unknown_extension_is_an_error_naming_the_file_and_accepted_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "data.csv", "text\nhello\n");
    let err = first_error(&[f], &opts());
    assert!(
        err.contains("data.csv") && err.contains(".jsonl") && err.contains(".parquet"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// JSONL

#[test]
fn jsonl_text_documents_skip_blank_lines_nulls_and_empty_strings() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.jsonl",
        "\u{feff}{\"id\": 1, \"text\": \"first\", \"meta\": {\"text\": 5}}\r\n\
         \n\
         {\"te\\u0078t\": \"escaped key\\n\\u00e9\"}\n\
         {\"text\": null}\n\
         {\"text\": \"\"}\n\
         \t  \n\
         {\"text\": \"last, no newline\"}",
    );
    let mut reader = DocumentReader::new(std::slice::from_ref(&f), &opts()).unwrap();
    let docs: Vec<Document> = reader.by_ref().map(|d| d.unwrap()).collect();
    assert_eq!(
        docs,
        vec![
            text("first"),
            text("escaped key\né"),
            text("last, no newline")
        ]
    );
    assert_eq!(reader.documents(), 3);
    assert_eq!(reader.skipped_nulls(), 1);
    assert_eq!(reader.skipped_empty(), 1);
    assert_eq!(reader.bytes_read(), std::fs::metadata(&f).unwrap().len());
}

#[test]
fn jsonl_id_arrays_are_pre_tokenized_documents() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "ids.jsonl",
        "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": []}\n{\"input_ids\": [4294967295, 0]}\n",
    );
    let o = CorpusOptions {
        text_field: "input_ids".into(),
        ..opts()
    };
    let docs = read_all(&[f], &o);
    assert_eq!(
        docs,
        vec![
            Document::Tokens(vec![1, 2, 3]),
            Document::Tokens(vec![u32::MAX, 0])
        ]
    );
}

#[test]
fn jsonl_invalid_json_error_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "bad.jsonl",
        "{\"text\": \"a\"}\n\n{\"text\": \"b\"\n",
    );
    let err = first_error(&[f], &opts());
    assert!(err.contains("bad.jsonl: line 3: not valid JSON"), "{err}");
    assert!(!err.contains("line 1 column"), "{err}");
    // A pretty-printed .json file is not JSON Lines.
    let f = write(dir.path(), "array.json", "[\n  {\"text\": \"a\"}\n]\n");
    let err = first_error(&[f], &opts());
    assert!(
        err.contains("array.json: line 1: not valid JSON")
            && err.contains("one JSON object per line"),
        "{err}"
    );
    let f = write(dir.path(), "trailing.jsonl", "{\"text\": \"a\"} x\n");
    let err = first_error(&[f], &opts());
    assert!(
        err.contains("trailing.jsonl: line 1: not valid JSON"),
        "{err}"
    );
}

#[test]
fn jsonl_missing_field_error_names_line_field_present_fields_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "m.jsonl",
        "{\"text\": \"a\"}\n{\"content\": \"b\", \"id\": 7}\n",
    );
    let err = first_error(&[f], &opts());
    assert!(err.contains("m.jsonl: line 2: no field `text`"), "{err}");
    assert!(
        err.contains("content, id") && err.contains("--text-field"),
        "{err}"
    );
}

#[test]
fn jsonl_wrong_types_are_errors_naming_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("{\"text\": 12}", "line 1: field `text` is a number"),
        (
            "{\"text\": {\"a\": 1}}",
            "line 1: field `text` is an object",
        ),
        ("{\"text\": true}", "line 1: field `text` is a boolean"),
        (
            "[\"text\"]",
            "line 1: expected a JSON object with a `text` field, found an array",
        ),
        (
            "\"just text\"",
            "line 1: expected a JSON object with a `text` field, found a string",
        ),
        (
            "{\"text\": [1, -1]}",
            "line 1: field `text`: token id at index 1 is -1, negative",
        ),
        (
            "{\"text\": [4294967296]}",
            "line 1: field `text`: token id at index 0 is 4294967296, too large",
        ),
        (
            "{\"text\": [1, 2.5]}",
            "line 1: field `text`: token id at index 1 is 2.5, not an integer",
        ),
        (
            "{\"text\": [1, \"2\"]}",
            "line 1: field `text`: token id at index 1 is a string",
        ),
    ];
    for (i, (line, expected)) in cases.iter().enumerate() {
        let f = write(dir.path(), &format!("case{i}.jsonl"), format!("{line}\n"));
        let err = first_error(&[f], &opts());
        assert!(
            err.contains(&format!("case{i}.jsonl: {expected}")),
            "{line}: {err}"
        );
    }
}

#[test]
fn jsonl_is_streamed_with_monotonic_bytes_read() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000usize;
    let mut contents = String::new();
    for i in 0..n {
        contents.push_str(&format!(
            "{{\"text\": \"document number {i}\", \"n\": {i}}}\n"
        ));
    }
    let f = write(dir.path(), "big.jsonl", &contents);
    let total = contents.len() as u64;
    let mut reader = DocumentReader::new(&[f], &opts()).unwrap();
    assert_eq!(reader.bytes_read(), 0);
    let mut last = 0;
    let mut count = 0usize;
    while let Some(doc) = reader.next() {
        let doc = doc.unwrap();
        let b = reader.bytes_read();
        assert!(b > last, "bytes_read advances: {b} after {last}");
        if count == n / 2 {
            // Halfway through the documents, about half the file was consumed.
            assert!(b < total * 6 / 10 && b > total * 4 / 10, "{b} of {total}");
            assert_eq!(doc, text(&format!("document number {count}")));
        }
        last = b;
        count += 1;
    }
    assert_eq!(count, n);
    assert_eq!(last, total);
}

// ---------------------------------------------------------------------------------------------
// Text

#[test]
fn text_file_mode_gives_one_document_per_file_skipping_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.txt", "line one\n\nline three\n");
    let e = write(dir.path(), "empty.txt", "");
    let b = write(dir.path(), "b.md", "\u{feff}# Title\n");
    let mut reader = DocumentReader::new(&[a.clone(), e, b], &opts()).unwrap();
    let docs: Vec<Document> = reader.by_ref().map(|d| d.unwrap()).collect();
    assert_eq!(
        docs,
        vec![text("line one\n\nline three\n"), text("# Title\n")]
    );
    assert_eq!(reader.skipped_empty(), 1);
    assert_eq!(
        reader.bytes_read(),
        21 + 11,
        "the empty file counts 0 bytes"
    );
}

#[test]
fn text_blank_line_mode_gives_one_document_per_block() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.txt",
        "\n\nfirst block\nsecond line\n\n \t\n\nsecond block\r\n\r\nthird\nblock",
    );
    let b = write(dir.path(), "b.txt", "only block\n");
    let o = CorpusOptions {
        text_split: TextSplit::BlankLine,
        ..opts()
    };
    let docs = read_all(&[a, b], &o);
    assert_eq!(
        docs,
        vec![
            text("first block\nsecond line"),
            text("second block"),
            text("third\nblock"),
            text("only block"),
        ]
    );
}

#[test]
fn text_invalid_utf8_error_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "bin.txt", b"ok\nstill ok\nbad \xff byte\n");
    for split in [TextSplit::File, TextSplit::BlankLine] {
        let o = CorpusOptions {
            text_split: split,
            ..opts()
        };
        let err = first_error(std::slice::from_ref(&f), &o);
        assert!(
            err.contains("bin.txt: line 3: not valid UTF-8"),
            "{split:?}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Parquet

#[test]
fn parquet_text_column_gives_documents_across_batches_and_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let n = 2500usize; // 4 row groups of <= 700 rows, 3 batches of <= 1024 rows
    let texts: Vec<Option<String>> = (0..n)
        .map(|i| match i % 10 {
            3 => None,
            7 => Some(String::new()),
            _ => Some(format!("row {i}")),
        })
        .collect();
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n as i64));
    let col: ArrayRef = Arc::new(StringArray::from(texts.clone()));
    for (name, compression, col) in [
        ("snappy.parquet", Compression::SNAPPY, col.clone()),
        (
            "zstd.parquet",
            Compression::ZSTD(ZstdLevel::default()),
            Arc::new(LargeStringArray::from(texts.clone())) as ArrayRef,
        ),
    ] {
        let f = dir.path().join(name);
        write_parquet(&f, vec![("id", ids.clone()), ("text", col)], compression);
        let mut reader = DocumentReader::new(std::slice::from_ref(&f), &opts()).unwrap();
        let mut docs = Vec::new();
        let mut last = 0;
        while let Some(d) = reader.next() {
            docs.push(d.unwrap());
            let b = reader.bytes_read();
            assert!(b >= last, "bytes_read is monotonic");
            last = b;
        }
        let last = reader.bytes_read();
        let expected: Vec<Document> = (0..n)
            .filter(|i| i % 10 != 3 && i % 10 != 7)
            .map(|i| text(&format!("row {i}")))
            .collect();
        assert_eq!(docs.len(), 2000, "{name}");
        assert_eq!(docs, expected, "{name}");
        assert_eq!(reader.skipped_nulls(), 250);
        assert_eq!(reader.skipped_empty(), 250);
        assert_eq!(last, std::fs::metadata(&f).unwrap().len());
    }
}

#[test]
fn parquet_dictionary_and_view_string_columns_are_text() {
    use arrow::array::{DictionaryArray, StringViewArray};
    use arrow::datatypes::Int32Type;
    let dir = tempfile::tempdir().unwrap();
    let dict: DictionaryArray<Int32Type> = vec![Some("a"), None, Some("b"), Some("a")]
        .into_iter()
        .collect();
    let view = StringViewArray::from(vec![
        Some("x"),
        Some("a longer string than twelve bytes"),
        None,
        Some("z"),
    ]);
    let f = dir.path().join("kinds.parquet");
    write_parquet(
        &f,
        vec![
            ("dict", Arc::new(dict) as ArrayRef),
            ("view", Arc::new(view) as ArrayRef),
        ],
        Compression::SNAPPY,
    );
    let o = |field: &str| CorpusOptions {
        text_field: field.into(),
        ..opts()
    };
    assert_eq!(
        read_all(std::slice::from_ref(&f), &o("dict")),
        vec![text("a"), text("b"), text("a")]
    );
    assert_eq!(
        read_all(std::slice::from_ref(&f), &o("view")),
        vec![
            text("x"),
            text("a longer string than twelve bytes"),
            text("z")
        ]
    );
}

#[test]
fn parquet_list_of_integers_gives_pre_tokenized_documents() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Option<Vec<Option<i64>>>> = vec![
        Some(vec![Some(5), Some(6), Some(7)]),
        None,
        Some(vec![]),
        Some(vec![Some(4_294_967_295)]),
    ];
    let col: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(rows));
    let f = dir.path().join("ids.parquet");
    write_parquet(
        &f,
        vec![("input_ids", col)],
        Compression::ZSTD(ZstdLevel::default()),
    );
    let o = CorpusOptions {
        text_field: "input_ids".into(),
        ..opts()
    };
    let mut reader = DocumentReader::new(std::slice::from_ref(&f), &o).unwrap();
    let docs: Vec<Document> = reader.by_ref().map(|d| d.unwrap()).collect();
    assert_eq!(
        docs,
        vec![
            Document::Tokens(vec![5, 6, 7]),
            Document::Tokens(vec![u32::MAX])
        ]
    );
    assert_eq!((reader.skipped_nulls(), reader.skipped_empty()), (1, 1));

    // Narrow unsigned lists work too.
    let rows = vec![Some(vec![Some(1u16), Some(65535)])];
    let col: ArrayRef = Arc::new(ListArray::from_iter_primitive::<UInt16Type, _, _>(rows));
    let f = dir.path().join("u16.parquet");
    write_parquet(&f, vec![("input_ids", col)], Compression::SNAPPY);
    assert_eq!(read_all(&[f], &o), vec![Document::Tokens(vec![1, 65535])]);
}

#[test]
fn parquet_errors_name_file_and_column_or_row() {
    let dir = tempfile::tempdir().unwrap();

    let f = write(dir.path(), "fake.parquet", "this is not parquet at all");
    let err = DocumentReader::new(&[f], &opts()).err().unwrap();
    assert!(matches!(err, Error::Parquet { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("fake.parquet: not a readable Parquet file"),
        "{err}"
    );

    let f = dir.path().join("cols.parquet");
    let a: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
    let b: ArrayRef = Arc::new(Int64Array::from(vec![1]));
    write_parquet(&f, vec![("content", a), ("text", b)], Compression::SNAPPY);
    let err = first_error(
        std::slice::from_ref(&f),
        &CorpusOptions {
            text_field: "body".into(),
            ..opts()
        },
    );
    assert!(
        err.contains("cols.parquet: field `body`: no such column"),
        "{err}"
    );
    assert!(
        err.contains("content, text") && err.contains("--text-field"),
        "{err}"
    );
    let err = first_error(std::slice::from_ref(&f), &opts());
    assert!(
        err.contains("cols.parquet: field `text`: column has type Int64"),
        "{err}"
    );

    let rows = vec![Some(vec![Some(1i64)]), Some(vec![Some(2), Some(-3)])];
    let col: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(rows));
    let f = dir.path().join("neg.parquet");
    write_parquet(&f, vec![("text", col)], Compression::SNAPPY);
    let err = first_error(&[f], &opts());
    assert!(
        err.contains("neg.parquet: row 1: token id at index 1 is -3, negative"),
        "{err}"
    );

    let rows = vec![Some(vec![Some(1i64), None])];
    let col: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(rows));
    let f = dir.path().join("nullid.parquet");
    write_parquet(&f, vec![("text", col)], Compression::SNAPPY);
    let err = first_error(&[f], &opts());
    assert!(
        err.contains("nullid.parquet: row 0: token id at index 1 is null"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tokenizer loading

#[test]
fn load_tokenizer_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing/tokenizer.json");
    let err = load_tokenizer(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("missing/tokenizer.json"));
    let corrupt = write(
        dir.path(),
        "tokenizer.json",
        "{\"version\": \"1.0\", \"model\": 3}",
    );
    let err = load_tokenizer(&corrupt).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err:?}");
    assert!(
        err.to_string().contains("tokenizer.json: not a valid"),
        "{err}"
    );
}

#[test]
fn find_eos_prefers_endoftext_and_returns_none_without_candidates() {
    let tok = sample_tokenizer(300);
    assert_eq!(find_eos(&tok), Some(0));
    let mut tok2 = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
    assert_eq!(find_eos(&tok2), None);
    tok2.add_special_tokens([tokenizers::AddedToken::from("</s>", true)])
        .unwrap();
    assert_eq!(find_eos(&tok2), Some(0));
}

// ---------------------------------------------------------------------------------------------
// SequenceStream

const EOS: u32 = 0;
const PAD: u32 = 1;

fn stream(
    files: &[PathBuf],
    o: &CorpusOptions,
    tok: &Arc<tokenizers::Tokenizer>,
    seq_len: usize,
    vocab: usize,
) -> SequenceStream {
    SequenceStream::new(
        DocumentReader::new(files, o).unwrap(),
        tok.clone(),
        seq_len,
        EOS,
        PAD,
        vocab,
    )
}

/// The real tokens of a list of sequences, in order; checks shapes and ids on the way.
fn concat_real(seqs: &[PackedSequence], seq_len: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(s.seq_id, i as u64);
        assert_eq!(s.input_ids.len(), seq_len);
        let real = s.loss_mask.iter().filter(|&&m| m).count();
        if i + 1 < seqs.len() {
            assert_eq!(real, seq_len);
        }
        out.extend_from_slice(&s.input_ids[..real]);
    }
    out
}

#[test]
fn sequence_stream_equals_direct_encoding_of_each_document_plus_eos() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Arc::new(sample_tokenizer(400));
    // 700 documents: more than two tokenizer batches.
    let docs: Vec<String> = sample_texts()
        .into_iter()
        .cycle()
        .take(700)
        .enumerate()
        .map(|(i, t)| format!("{i}: {t}"))
        .collect();
    let mut jsonl = String::new();
    for d in &docs {
        jsonl.push_str(&serde_json::json!({ "text": d }).to_string());
        jsonl.push('\n');
    }
    let f = write(dir.path(), "c.jsonl", &jsonl);
    let seq_len = 64;
    let mut s = stream(&[f], &opts(), &tok, seq_len, 400);
    let mut seqs = Vec::new();
    let mut last = 0;
    while let Some(seq) = s.next() {
        seqs.push(seq.unwrap());
        assert!(s.bytes_read() >= last);
        last = s.bytes_read();
    }
    assert_eq!(last, jsonl.len() as u64);

    let mut expected = Vec::new();
    for d in &docs {
        expected.extend_from_slice(tok.encode(d.as_str(), false).unwrap().get_ids());
        expected.push(EOS);
    }
    let got = concat_real(&seqs, seq_len);
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
    assert_eq!(seqs.len(), expected.len().div_ceil(seq_len));
    assert_eq!(s.documents(), 700);
    assert_eq!(s.tokens() as usize, expected.len() - 700);
    let last = seqs.last().unwrap();
    let pad = seq_len - (expected.len() - seq_len * (seqs.len() - 1));
    assert!(last.input_ids[seq_len - pad..].iter().all(|&t| t == PAD));
    assert_eq!(last.loss_mask.iter().filter(|&&m| !m).count(), pad);
}

#[test]
fn sequence_stream_keeps_corpus_order_of_text_and_pre_tokenized_documents() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Arc::new(sample_tokenizer(350));
    let a = write(
        dir.path(),
        "a.jsonl",
        "{\"text\": [300, 301]}\n{\"text\": \"The model reads\"}\n{\"text\": [7]}\n",
    );
    let b = write(dir.path(), "b.txt", "Every token\n\nThe teacher stores\n");
    let o = CorpusOptions {
        text_split: TextSplit::BlankLine,
        ..opts()
    };
    let seqs: Vec<PackedSequence> = stream(&[a, b], &o, &tok, 5, 350)
        .map(|s| s.unwrap())
        .collect();
    let enc = |t: &str| tok.encode(t, false).unwrap().get_ids().to_vec();
    let mut expected = vec![300, 301, EOS];
    expected.extend(enc("The model reads"));
    expected.extend([EOS, 7, EOS]);
    expected.extend(enc("Every token"));
    expected.push(EOS);
    expected.extend(enc("The teacher stores"));
    expected.push(EOS);
    assert_eq!(concat_real(&seqs, 5), expected);
}

#[test]
fn sequence_stream_ignores_tokenizer_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = sample_tokenizer(300);
    let long = sample_texts().join(" ");
    let full = t.encode(long.as_str(), false).unwrap().len();
    t.with_truncation(Some(tokenizers::TruncationParams {
        max_length: 8,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(t.encode(long.as_str(), false).unwrap().len(), 8);
    let f = write(dir.path(), "long.txt", &long);
    let seqs: Vec<PackedSequence> = stream(&[f], &opts(), &Arc::new(t), 128, 300)
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(concat_real(&seqs, 128).len(), full + 1);
}

#[test]
fn sequence_stream_given_id_beyond_vocab_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Arc::new(sample_tokenizer(300));
    let f = write(
        dir.path(),
        "ids.jsonl",
        "{\"text\": [1, 2]}\n{\"text\": [3, 300]}\n",
    );
    let results: Vec<Result<PackedSequence>> = stream(&[f], &opts(), &tok, 4, 300).collect();
    assert_eq!(results.len(), 1, "the stream ends at the error");
    let err = results[0].as_ref().unwrap_err().to_string();
    assert!(
        err.contains(
            "ids.jsonl: line 2: token id 300 at index 1 is not below the model's vocab_size 300"
        ),
        "{err}"
    );

    let rows = vec![Some(vec![Some(1i64)]), Some(vec![Some(999)])];
    let col: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(rows));
    let p = dir.path().join("ids.parquet");
    write_parquet(&p, vec![("text", col)], Compression::SNAPPY);
    let err = stream(&[p], &opts(), &tok, 4, 300)
        .find_map(|r| r.err())
        .unwrap()
        .to_string();
    assert!(err.contains("ids.parquet: row 1: token id 999"), "{err}");
}

#[test]
fn sequence_stream_tokenizer_id_beyond_vocab_is_an_error_naming_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Arc::new(sample_tokenizer(400));
    let f = write(
        dir.path(),
        "t.jsonl",
        "{\"text\": \"a\"}\n{\"text\": \"The model predicts the next word\"}\n",
    );
    // The sentence uses merges (ids >= 257) that a model of 257 ids does not have.
    let err = stream(&[f], &opts(), &tok, 4, 257)
        .find_map(|r| r.err())
        .unwrap()
        .to_string();
    assert!(
        err.contains("t.jsonl: line 2: the tokenizer produced token id"),
        "{err}"
    );
    assert!(err.contains("vocab_size 257"), "{err}");
}

#[test]
fn sequence_stream_of_a_corpus_without_documents_yields_one_error_naming_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Arc::new(sample_tokenizer(300));
    let a = write(
        dir.path(),
        "a.jsonl",
        "{\"text\": null}\n\n{\"text\": \"\"}\n",
    );
    let b = write(dir.path(), "b.txt", "");
    let results: Vec<Result<PackedSequence>> = stream(&[a, b], &opts(), &tok, 4, 300).collect();
    assert_eq!(results.len(), 1);
    let err = results[0].as_ref().unwrap_err();
    assert!(matches!(err, Error::EmptyCorpus { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("a.jsonl") && msg.contains("b.txt") && msg.contains("holds no documents"),
        "{msg}"
    );
    assert!(msg.contains("1 null and 2 empty"), "{msg}");
}
