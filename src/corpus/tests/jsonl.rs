//! JSONL documents: text and id fields, skips, error messages, streaming.

use super::*;

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
