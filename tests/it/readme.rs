//! No drift between README.md and the program: every `taidcache` command of the README's `sh`
//! blocks runs as written, in a directory where the README's relative paths (`models/…`,
//! `data/…`) are tiny fixtures; only sizes are scaled down. Commands that ask for a GPU must
//! fail with the one-sentence error of a CPU build. The pyarrow and DuckDB snippets run on the
//! cache the commands made.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use taidcache::model::Architecture;

/// Flag values replaced to keep the run small (flag, value).
const SCALE: &[(&str, &str)] = &[
    ("--seq-len", "16"),
    ("--batch-size", "4"),
    ("--steps", "4"),
    ("--warmup", "1"),
    ("--eval-every", "2"),
    ("--save-every", "2"),
    ("--eval-fraction", "0.25"),
    ("--top-k", "8"),
];

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The bodies of the README's fenced blocks of language `lang`.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match (&mut cur, line.trim_start().strip_prefix("```")) {
            (None, Some(l)) if l.trim() == lang => cur = Some(String::new()),
            (Some(_), Some(_)) => out.push(cur.take().unwrap()),
            (Some(b), None) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// Every `taidcache …` command of the `sh` blocks, continuations joined, comments dropped.
fn commands(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for b in blocks(text, "sh") {
        let joined = b.replace("\\\n", " ");
        for line in joined.lines() {
            let line = line.split(" #").next().unwrap().trim();
            if let Some(rest) = line.strip_prefix("taidcache ") {
                out.push(rest.split_whitespace().map(String::from).collect());
            }
        }
    }
    out
}

fn scaled(mut args: Vec<String>) -> Vec<String> {
    for (flag, value) in SCALE {
        if let Some(i) = args.iter().position(|a| a == flag) {
            args[i + 1] = value.to_string();
        }
    }
    for a in args.iter_mut() {
        *a = a.replace("$I", "0").replace("$N", "1");
    }
    // A pipeline config is written for production: run it small and on the CPU.
    if args.iter().any(|a| a == "--config") {
        args.extend(
            [
                "--device",
                "cpu",
                "--dtype",
                "f32",
                "--seq-len",
                "16",
                "--top-k",
                "8",
                "--batch-size",
                "4",
            ]
            .map(String::from),
        );
    }
    args
}

#[test]
fn every_readme_command_runs_as_written() {
    let text = readme();
    let cmds = commands(&text);
    assert!(
        cmds.len() >= 8,
        "found only {} commands in README.md",
        cmds.len()
    );
    let fx = Fixture::new(Architecture::Llama, 60);
    let work = fx.path("work");
    let link = |from: &Path, to: &str| {
        let to = work.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(from, to).unwrap();
    };
    for name in [
        "models/qwen2-7b",
        "models/qwen2-72b",
        "models/qwen2.5-32b",
        "models/teacher",
    ] {
        link(&fx.teacher, name);
    }
    let gguf = work.join("models/smollm2-135m-q8_0.gguf");
    crate::gguf::write_gguf(&fx.teacher, &gguf, "q8_0", &[]);
    link(&fx.corpus, "data/train.jsonl");
    link(&fx.corpus, "data/train/part-0.jsonl");
    link(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines"),
        "pipelines",
    );
    // `taidcache import`: a DistillKit capture (a golden one) and a vLLM-style top-k dump.
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/distillkit");
    link(
        &golden.join("budget.parquet"),
        "data/qwen3-235b-logits/data/train-00000.parquet",
    );
    link(
        &golden.join("budget.yaml"),
        "data/qwen3-235b-logits/compression_config.yaml",
    );
    link(
        &fx.teacher.join("tokenizer.json"),
        "models/qwen3/tokenizer.json",
    );
    std::fs::write(
        work.join("data/vllm-dump.jsonl"),
        "{\"input_ids\": [5, 6, 7], \"topk_ids\": [null, [1, 2], [3, 4]], \"topk_logprobs\": [null, [-0.5, -1.5], [-0.2, -2.5]]}\n",
    )
    .unwrap();
    let student = fx.path("student");
    let tok = taidcache::corpus::load_tokenizer(&fx.teacher.join("tokenizer.json")).unwrap();
    let mut spec = taidcache::testing::TinySpec::new(Architecture::Qwen2, 320);
    spec.layers = 1;
    taidcache::testing::write_tiny_model(&student, &spec, Some(&tok)).unwrap();
    for name in ["models/qwen2-0.5b", "models/qwen2-1.5b"] {
        link(&student, name);
    }

    for args in cmds {
        let args = scaled(args);
        let o = Command::new(env!("CARGO_BIN_EXE_taidcache"))
            .args(&args)
            .current_dir(&work)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        if args.iter().any(|a| a.starts_with("cuda")) {
            assert!(
                !o.status.success(),
                "taidcache {}: a GPU command succeeded in a CPU build",
                args.join(" ")
            );
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(
                stderr.contains("--device") && stderr.contains("--features cuda"),
                "{stderr}"
            );
        } else {
            assert!(
                o.status.success(),
                "taidcache {} failed:\n{stderr}",
                args.join(" ")
            );
            assert!(
                !o.stdout.is_empty(),
                "taidcache {}: no output",
                args.join(" ")
            );
        }
    }
    assert!(work.join("students.svg").exists());

    // The snippets, on the cache the commands made.
    let cache = work.join("caches/qwen2-top50");
    let python = blocks(&text, "python")
        .concat()
        .replace("CACHE", cache.to_str().unwrap());
    let sql = blocks(&text, "sql")
        .concat()
        .replace("CACHE", cache.to_str().unwrap());
    let duck = format!("import duckdb\nrows = duckdb.sql({sql:?}).fetchall()\nassert len(rows) >= 1, rows\nprint(rows)\n");
    for script in [python, duck] {
        let o = Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.stdout.is_empty());
    }
}
