//! Bad input: one clear error line on stderr naming the culprit, a non-zero exit, no panic, and
//! no cache left looking complete.

use std::path::Path;

use crate::common::*;
use taidcache::model::Architecture;

/// Run precompute with `extra` flags over the defaults of these tests; return stderr.
fn precompute_fails(teacher: &Path, corpus: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "precompute",
        "--teacher",
        teacher.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    for (flag, value) in [("--seq-len", "16"), ("--top-k", "4")] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    let o = taidcache(&args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "expected failure for {extra:?}, got success; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        !out.join("manifest.json").exists()
            || !taidcache::cache::manifest::Manifest::load(&out.join("manifest.json"))
                .unwrap()
                .complete,
        "a failed run left a complete-looking cache"
    );
    stderr
}

#[test]
fn teacher_problems_name_the_file_or_tensor() {
    let fx = Fixture::new(Architecture::Llama, 10);
    let out = fx.path("out");
    let cfg = fx.teacher.join("config.json");
    let original = std::fs::read_to_string(&cfg).unwrap();

    let cases: [(String, &[&str]); 4] = [
        ("{ not json".into(), &["config.json", "invalid JSON"]),
        (
            original.replace("\"llama\"", "\"gpt_neox\""),
            &["gpt_neox", "unsupported model_type"],
        ),
        (
            original.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
            &["missing tensor", "model.layers.2."],
        ),
        (
            original.replace("\"vocab_size\": 320", "\"vocab_size\": 200"),
            &["model.embed_tokens.weight", "shape"],
        ),
    ];
    for (config, wanted) in &cases {
        std::fs::write(&cfg, config).unwrap();
        expect(
            &precompute_fails(&fx.teacher, &fx.corpus, &out, &[]),
            wanted,
        );
    }

    std::fs::write(&cfg, &original).unwrap();
    std::fs::remove_file(&cfg).unwrap();
    expect(
        &precompute_fails(&fx.teacher, &fx.corpus, &out, &[]),
        &["config.json"],
    );
    std::fs::write(&cfg, &original).unwrap();

    let pickle_dir = fx.path("pickle");
    std::fs::create_dir_all(&pickle_dir).unwrap();
    std::fs::copy(&cfg, pickle_dir.join("config.json")).unwrap();
    std::fs::write(pickle_dir.join("pytorch_model.bin"), b"not really").unwrap();
    expect(
        &precompute_fails(&pickle_dir, &fx.corpus, &out, &[]),
        &["pytorch_model.bin", "safetensors"],
    );
}

#[test]
fn tokenizer_larger_than_the_model_vocab_is_refused() {
    let mut spec = taidcache::testing::TinySpec::new(Architecture::Qwen2, 320);
    spec.vocab_size = 200; // the test tokenizer has about 300 tokens
    let fx = Fixture::with_spec(spec, 10);
    let e = precompute_fails(&fx.teacher, &fx.corpus, &fx.path("out"), &[]);
    expect(&e, &["tokenizer.json", "vocab_size 200"]);
}

#[test]
fn corpus_problems_name_the_file_and_line() {
    let fx = Fixture::new(Architecture::Qwen3, 10);
    let out = fx.path("out");

    let empty = fx.path("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    expect(
        &precompute_fails(&fx.teacher, &empty, &out, &[]),
        &["empty.jsonl"],
    );

    let no_field = fx.path("nofield.jsonl");
    std::fs::write(
        &no_field,
        "{\"text\": \"fine\"}\n{\"body\": \"where is text\"}\n",
    )
    .unwrap();
    expect(
        &precompute_fails(&fx.teacher, &no_field, &out, &[]),
        &["nofield.jsonl", "line 2", "text"],
    );

    let bad_parquet = fx.path("bad.parquet");
    std::fs::write(&bad_parquet, b"PAR1 this is not parquet at all").unwrap();
    expect(
        &precompute_fails(&fx.teacher, &bad_parquet, &out, &[]),
        &["bad.parquet"],
    );

    let missing = fx.path("missing.jsonl");
    expect(
        &precompute_fails(&fx.teacher, &missing, &out, &[]),
        &["missing.jsonl"],
    );
}

#[test]
fn bad_flags_are_named() {
    let fx = Fixture::new(Architecture::Phi3, 10);
    let out = fx.path("out");
    expect(
        &precompute_fails(&fx.teacher, &fx.corpus, &out, &["--top-k", "0"]),
        &["--top-k"],
    );
    expect(
        &precompute_fails(&fx.teacher, &fx.corpus, &out, &["--top-k", "321"]),
        &["--top-k", "vocab_size 320"],
    );
    expect(
        &precompute_fails(&fx.teacher, &fx.corpus, &out, &["--dtype", "f8"]),
        &["--dtype"],
    );
    expect(
        &precompute_fails(&fx.teacher, &fx.corpus, &out, &["--device", "cuda:0"]),
        &["--device", "cuda"],
    );
    expect(
        &precompute_fails(
            &fx.teacher,
            &fx.corpus,
            &out,
            &["--worker", "3", "--workers", "3"],
        ),
        &["--worker"],
    );
    expect(
        &precompute_fails(&fx.teacher, &fx.corpus, &out, &["--seq-len", "100000"]),
        &["--seq-len"],
    );
}

#[test]
fn output_directory_of_a_different_teacher_is_refused() {
    let fx = Fixture::new(Architecture::Llama, 10);
    let out = fx.path("out");
    let ok = taidcache(&[
        "precompute",
        "--teacher",
        fx.teacher.to_str().unwrap(),
        "--corpus",
        fx.corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--seq-len",
        "16",
        "--top-k",
        "4",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let other = fx.path("other-teacher");
    let mut spec = taidcache::testing::TinySpec::new(Architecture::Llama, 320);
    spec.seed = 99;
    let tok = taidcache::corpus::load_tokenizer(&fx.teacher.join("tokenizer.json")).unwrap();
    taidcache::testing::write_tiny_model(&other, &spec, Some(&tok)).unwrap();
    // Same config, other weights would keep the header hash; change the config too.
    let cfg = other.join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("1e-6", "1e-5");
    std::fs::write(&cfg, text).unwrap();
    let o = taidcache(&[
        "precompute",
        "--teacher",
        other.to_str().unwrap(),
        "--corpus",
        fx.corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--seq-len",
        "16",
        "--top-k",
        "4",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    expect(&stderr, &["does not match", "teacher."]);
    // The first cache is untouched and still verifies.
    let v = taidcache(&["verify", out.to_str().unwrap()]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[test]
fn a_corrupt_parquet_corpus_page_is_one_error_line_without_a_panic_report() {
    // parquet 60 panics decoding this page (found by tests/it/fuzz.rs); the reader catches it
    // and the binary's panic hook keeps the caught panic's report off stderr.
    let fx = Fixture::new(Architecture::Llama, 10);
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus/corpus/found-parquet-panic/c.parquet");
    let stderr = precompute_fails(&fx.teacher, &corpus, &fx.path("out"), &[]);
    expect(&stderr, &["c.parquet", "the file is corrupt"]);
}
