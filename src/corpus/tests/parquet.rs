//! Parquet documents: text and id-list columns, batches and row groups, error messages.

use std::sync::Arc;

use ::parquet::basic::ZstdLevel;
use arrow::array::{Int64Array, LargeStringArray, ListArray, StringArray};
use arrow::datatypes::{Int64Type, UInt16Type};

use super::*;

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
