//! Format detection, options, directory expansion and the manifest's file descriptions.

use super::*;

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
fn directories_are_read_at_every_depth_and_a_link_loop_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("corpus");
    write(&d, "a.txt", "a");
    write(&d, "one/b.txt", "b");
    write(&d, "one/two/three/c.txt", "c");
    let files = expand_inputs(std::slice::from_ref(&d)).unwrap();
    assert_eq!(
        files,
        [
            d.join("a.txt"),
            d.join("one/b.txt"),
            d.join("one/two/three/c.txt")
        ]
    );
    // The manifest records each file with its subdirectories.
    let infos = describe_files(std::slice::from_ref(&d)).unwrap();
    assert_eq!(
        infos[2].path,
        d.join("one/two/three/c.txt").display().to_string()
    );
    #[cfg(unix)]
    {
        let link = d.join("one/two/back");
        std::os::unix::fs::symlink(d.join("one"), &link).unwrap();
        let err = expand_inputs(std::slice::from_ref(&d))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&link.display().to_string()) && err.contains("link back to"),
            "{err}"
        );
    }
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
