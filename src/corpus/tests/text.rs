//! Text documents: one per file or one per block of lines.

use super::*;

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
