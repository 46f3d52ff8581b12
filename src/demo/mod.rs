//! `taidcache demo`: the whole product on an embedded default, with no download and no GPU.
//!
//! 1. A corpus from a seeded stochastic grammar ([`grammar`]), with a held-out split.
//! 2. A byte-level BPE tokenizer trained on it with the `tokenizers` crate.
//! 3. A teacher trained with `distill --objective ce` (from a token cache of the untrained
//!    teacher: `precompute --top-k 1` packs the corpus; only the tokens are used).
//! 4. `precompute` of the trained teacher with k = 50, train and held-out caches; `inspect`.
//! 5. Three students of one small config distilled from the same cache (`taid`, `kl`, `ce`),
//!    evaluated on the held-out cache; a table and a plot.
//!
//! Every stage after the tokenizer runs through the public subcommands, printed as a user
//! would type them.

pub mod grammar;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::cli::{self, Cli};
use crate::corpus::bpe::train_bpe;
use crate::error::{Error, IoContext, Result};
use crate::model::Architecture;
use crate::testing::{write_tiny_model, TinySpec};

/// Sizes of one demo run; [`DemoConfig::default`] is `make demo`, tests use a smaller one.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    pub train_docs: usize,
    pub heldout_docs: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub teacher_layers: usize,
    pub teacher_hidden: usize,
    pub teacher_steps: u64,
    pub teacher_lr: f64,
    pub student_layers: usize,
    pub student_hidden: usize,
    pub student_steps: u64,
    pub student_lr: f64,
    pub batch_size: usize,
    pub top_k: usize,
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            train_docs: 3000,
            heldout_docs: 200,
            vocab_size: 1024,
            seq_len: 128,
            teacher_layers: 4,
            teacher_hidden: 256,
            teacher_steps: 300,
            teacher_lr: 2e-3,
            student_layers: 2,
            student_hidden: 96,
            student_steps: 300,
            student_lr: 3e-3,
            batch_size: 8,
            top_k: 50,
            seed: 0,
        }
    }
}

/// One student's held-out result.
#[derive(Clone, Debug, Serialize)]
pub struct StudentResult {
    pub objective: String,
    pub ce: f64,
    pub kl_teacher: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DemoSummary {
    pub out: PathBuf,
    pub students: Vec<StudentResult>,
    pub plot: PathBuf,
    pub elapsed_s: f64,
}

/// The objectives the demo compares.
pub const STUDENTS: [&str; 3] = ["taid", "kl", "ce"];

/// Run the demo into `out` (created; must be empty or absent).
pub fn run(out: &Path, cfg: &DemoConfig, w: &mut dyn Write) -> Result<DemoSummary> {
    let started = Instant::now();
    if out.exists() && std::fs::read_dir(out).at(out)?.next().is_some() {
        return Err(Error::flag(
            "--out",
            format!("{} is not empty; choose a new directory", out.display()),
        ));
    }
    std::fs::create_dir_all(out).at(out)?;
    let p = |name: &str| out.join(name);
    let say = |w: &mut dyn Write, msg: String| writeln!(w, "{msg}").at(out);

    // 1–2. Corpus and tokenizer.
    let g = grammar::Grammar::default();
    let train = g.documents(cfg.train_docs, cfg.seed);
    let heldout = g.documents(cfg.heldout_docs, cfg.seed ^ 0x5eed);
    std::fs::create_dir_all(p("corpus")).at(p("corpus"))?;
    write_jsonl(&p("corpus/train.jsonl"), &train)?;
    write_jsonl(&p("corpus/heldout.jsonl"), &heldout)?;
    let refs: Vec<&str> = train.iter().map(String::as_str).collect();
    let tokenizer = train_bpe(&refs, cfg.vocab_size);
    let vocab = tokenizer.get_vocab_size(true);
    say(w, format!(
        "# corpus: {} training and {} held-out documents from the demo grammar in {}; BPE tokenizer of {vocab} tokens",
        train.len(),
        heldout.len(),
        p("corpus").display()
    ))?;

    // 3. The teacher: a random init, trained with next-token CE.
    let eos = crate::corpus::find_eos(&tokenizer).unwrap_or(0);
    let spec = |layers: usize, hidden: usize, seed: u64| TinySpec {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: hidden * 8 / 3 / 32 * 32,
        layers,
        heads: (hidden / 32).max(1),
        kv_heads: (hidden / 64).max(1),
        tie_word_embeddings: false,
        max_position_embeddings: cfg.seq_len.next_power_of_two(),
        eos_token_id: eos,
        seed,
        ..TinySpec::new(Architecture::Llama, vocab)
    };
    write_config_only(
        &p("models/teacher-init"),
        &spec(cfg.teacher_layers, cfg.teacher_hidden, cfg.seed),
        &tokenizer,
    )?;
    // The teacher's seeded init with its weights written out: `precompute --top-k 1` packs the
    // corpus with it, and its CE training starts from it.
    let init = crate::model::train::Student::from_dir(
        &p("models/teacher-init"),
        cfg.seed,
        &candle_core::Device::Cpu,
    )?;
    let tok_path = p("models/teacher-init").join(crate::model::weights::TOKENIZER_FILE);
    init.save_hf(
        &p("models/teacher-init"),
        candle_core::DType::F32,
        Some(&tok_path),
    )?;
    write_config_only(
        &p("models/student-init"),
        &spec(cfg.student_layers, cfg.student_hidden, cfg.seed + 1),
        &tokenizer,
    )?;
    say(w, format!(
        "# models: teacher {} layers × hidden {}, student {} layers × hidden {} (Llama, seeded random init)",
        cfg.teacher_layers, cfg.teacher_hidden, cfg.student_layers, cfg.student_hidden
    ))?;

    let d = |x: &Path| x.display().to_string();
    let seq = cfg.seq_len.to_string();
    let bs = cfg.batch_size.to_string();
    command(
        w,
        &[
            "precompute",
            "--teacher",
            &d(&p("models/teacher-init")),
            "--corpus",
            &d(&p("corpus/train.jsonl")),
            "--out",
            &d(&p("caches/tokens")),
            "--top-k",
            "1",
            "--seq-len",
            &seq,
            "--batch-size",
            &bs,
        ],
    )?;
    command(
        w,
        &[
            "distill",
            "--cache",
            &d(&p("caches/tokens")),
            "--student",
            &d(&p("models/teacher-init")),
            "--out",
            &d(&p("runs/teacher")),
            "--objective",
            "ce",
            "--steps",
            &cfg.teacher_steps.to_string(),
            "--batch-size",
            &bs,
            "--lr",
            &cfg.teacher_lr.to_string(),
            "--warmup",
            &(cfg.teacher_steps / 10).to_string(),
            "--seed",
            &cfg.seed.to_string(),
        ],
    )?;

    // 4. The cache of the trained teacher.
    let teacher = d(&p("runs/teacher/final"));
    let k = cfg.top_k.to_string();
    command(
        w,
        &[
            "precompute",
            "--teacher",
            &teacher,
            "--corpus",
            &d(&p("corpus/train.jsonl")),
            "--out",
            &d(&p("caches/train")),
            "--top-k",
            &k,
            "--seq-len",
            &seq,
            "--batch-size",
            &bs,
        ],
    )?;
    command(
        w,
        &[
            "precompute",
            "--teacher",
            &teacher,
            "--corpus",
            &d(&p("corpus/heldout.jsonl")),
            "--out",
            &d(&p("caches/heldout")),
            "--top-k",
            &k,
            "--seq-len",
            &seq,
            "--batch-size",
            &bs,
        ],
    )?;
    command(w, &["inspect", &d(&p("caches/train"))])?;

    // 5. Students.
    let mut students = Vec::new();
    let mut runs = Vec::new();
    for objective in STUDENTS {
        let run = p(&format!("runs/{objective}"));
        let steps = cfg.student_steps;
        command(
            w,
            &[
                "distill",
                "--cache",
                &d(&p("caches/train")),
                "--student",
                &d(&p("models/student-init")),
                "--out",
                &d(&run),
                "--objective",
                objective,
                "--steps",
                &steps.to_string(),
                "--batch-size",
                &bs,
                "--lr",
                &cfg.student_lr.to_string(),
                "--warmup",
                &(steps / 10).to_string(),
                "--alpha",
                "5e-3",
                "--eval-cache",
                &d(&p("caches/heldout")),
                "--eval-every",
                &(steps / 6).max(1).to_string(),
                "--seed",
                &cfg.seed.to_string(),
            ],
        )?;
        let last = last_eval(&run)?;
        students.push(StudentResult {
            objective: objective.to_string(),
            ce: last.0,
            kl_teacher: last.1,
        });
        runs.push(d(&run));
    }
    let plot = p("students.svg");
    let mut args = vec!["plot"];
    args.extend(runs.iter().map(String::as_str));
    let plot_s = d(&plot);
    args.extend(["--out", plot_s.as_str()]);
    command(w, &args)?;

    writeln!(
        w,
        "\n| student | held-out CE (nats/token) | held-out KL(teacher ‖ student) |"
    )
    .at(out)?;
    writeln!(w, "|---|---|---|").at(out)?;
    for s in &students {
        writeln!(w, "| {} | {:.4} | {:.4} |", s.objective, s.ce, s.kl_teacher).at(out)?;
    }
    let summary = DemoSummary {
        out: out.to_path_buf(),
        students,
        plot,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let json = p("summary.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .at(&json)?;
    writeln!(
        w,
        "\ndemo finished in {:.0} s; results in {}, plot in {}",
        summary.elapsed_s,
        json.display(),
        summary.plot.display()
    )
    .at(out)?;
    Ok(summary)
}

/// Print a subcommand as a user would type it, then run it through the real CLI.
fn command(w: &mut dyn Write, args: &[&str]) -> Result<()> {
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.to_string()
            }
        })
        .collect();
    writeln!(w, "\n$ taidcache {}", shown.join(" ")).map_err(|e| Error::io("<stdout>", e))?;
    let cli = Cli::try_parse_from(std::iter::once("taidcache").chain(args.iter().copied()))
        .map_err(|e| Error::Internal(format!("demo command does not parse: {e}")))?;
    cli::run(cli, w)
}

fn write_jsonl(path: &Path, docs: &[String]) -> Result<()> {
    let text: String = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d }).to_string() + "\n")
        .collect();
    std::fs::write(path, text).at(path)
}

/// `config.json` and `tokenizer.json` of `spec`, without weights: distill initializes it.
fn write_config_only(dir: &Path, spec: &TinySpec, tokenizer: &tokenizers::Tokenizer) -> Result<()> {
    write_tiny_model(dir, spec, Some(tokenizer))?;
    let weights = dir.join(crate::model::weights::SINGLE_FILE);
    std::fs::remove_file(&weights).at(&weights)
}

/// The last eval line of a run: (ce, kl_teacher).
fn last_eval(run: &Path) -> Result<(f64, f64)> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).at(&path)?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["split"] == "eval")
        .last()
        .and_then(|v| Some((v["ce"].as_f64()?, v["kl_teacher"].as_f64()?)))
        .ok_or_else(|| Error::field(&path, "split", "the run has no eval line"))
}
