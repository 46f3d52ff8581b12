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
//! Every stage after the tokenizer runs through the stages' own APIs with typed options, and
//! is printed as the command line a user would type for it ([`crate::config::command_line`]).

pub mod grammar;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::command_line;
use crate::corpus::bpe::train_bpe;
use crate::distill::metrics::{self, METRICS_FILE};
use crate::distill::objectives::Objective;
use crate::distill::DistillOptions;
use crate::error::{Error, IoContext, Result};
use crate::model::init::TinySpec;
use crate::model::Architecture;
use crate::precompute::PrecomputeOptions;

/// A decoder's depth and width.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Size {
    pub layers: usize,
    pub hidden: usize,
}

impl Size {
    /// The directory-name form, e.g. `L4-H256`.
    pub fn name(&self) -> String {
        format!("L{}-H{}", self.layers, self.hidden)
    }
}

/// Sizes of one demo run; [`DemoConfig::default`] is `make demo`, tests use a smaller one and
/// `make replicate` a larger one (`pipelines/replicate.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    pub train_docs: usize,
    pub heldout_docs: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    /// One teacher per size, each trained with CE on the same corpus.
    pub teachers: Vec<Size>,
    pub teacher_steps: u64,
    pub teacher_lr: f64,
    pub student: Size,
    /// The objectives distilled from every teacher's cache, one student each.
    pub objectives: Vec<Objective>,
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
            teachers: vec![Size {
                layers: 4,
                hidden: 256,
            }],
            teacher_steps: 300,
            teacher_lr: 2e-3,
            student: Size {
                layers: 2,
                hidden: 96,
            },
            objectives: vec![Objective::Taid, Objective::Kl, Objective::Ce],
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
    pub teacher: String,
    pub objective: String,
    pub ce: f64,
    pub kl_teacher: f64,
}

/// One teacher's held-out cross-entropy after its CE training.
#[derive(Clone, Debug, Serialize)]
pub struct TeacherResult {
    pub teacher: String,
    pub parameters: usize,
    pub ce: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DemoSummary {
    pub out: PathBuf,
    pub teachers: Vec<TeacherResult>,
    pub students: Vec<StudentResult>,
    /// One plot per teacher, of its students' runs.
    pub plots: Vec<PathBuf>,
    pub elapsed_s: f64,
}

/// Run the demo into `out` (created; must be empty or absent).
pub fn run(out: &Path, cfg: &DemoConfig, w: &mut dyn Write) -> Result<DemoSummary> {
    let started = Instant::now();
    if cfg.teachers.is_empty() || cfg.objectives.is_empty() {
        return Err(Error::flag(
            "--sizes",
            "`teachers` and `objectives` need at least one entry each",
        ));
    }
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

    // 3. Models: seeded random inits (config.json; the teachers' weights are written out because
    // precompute needs them to pack the corpus, and their CE training starts from them).
    let eos = crate::corpus::find_eos(&tokenizer).unwrap_or(0);
    let spec = |size: Size, seed: u64| TinySpec {
        vocab_size: vocab,
        hidden_size: size.hidden,
        intermediate_size: size.hidden * 8 / 3 / 32 * 32,
        layers: size.layers,
        heads: (size.hidden / 32).max(1),
        kv_heads: (size.hidden / 64).max(1),
        tie_word_embeddings: false,
        max_position_embeddings: cfg.seq_len.next_power_of_two(),
        eos_token_id: eos,
        seed,
        ..TinySpec::new(Architecture::Llama, vocab)
    };
    let single = cfg.teachers.len() == 1;
    // Directory names: `teacher`, `train`, … for the demo's one teacher; suffixed by size otherwise.
    let named = |base: &str, size: Size| {
        if single {
            base.to_string()
        } else {
            format!("{base}-{}", size.name())
        }
    };
    let d = |x: &Path| x.display().to_string();
    write_config_only(
        &p("models/student-init"),
        &spec(cfg.student, cfg.seed + 1),
        &tokenizer,
    )?;
    let precompute_opts = |teacher: &Path, corpus: &str, cache: &Path, top_k: usize| {
        let corpus = p(&format!("corpus/{corpus}.jsonl"));
        PrecomputeOptions {
            top_k,
            seq_len: cfg.seq_len,
            batch_size: cfg.batch_size,
            ..PrecomputeOptions::new(teacher, vec![corpus], cache)
        }
    };
    let mut teachers = Vec::new();
    let mut students = Vec::new();
    let mut plots = Vec::new();
    for (ti, &size) in cfg.teachers.iter().enumerate() {
        let init = p(&format!("models/{}", named("teacher-init", size)));
        write_config_only(&init, &spec(size, cfg.seed), &tokenizer)?;
        let student =
            crate::model::train::Student::from_dir(&init, cfg.seed, &candle_core::Device::Cpu)?;
        let parameters = student.params.iter().map(|(_, v)| v.elem_count()).sum();
        student.save_hf(
            &init,
            candle_core::DType::F32,
            Some(&init.join(crate::model::weights::TOKENIZER_FILE)),
        )?;
        say(w, format!(
            "\n# teacher {}: {} layers × hidden {} ({parameters} parameters); student: {} layers × hidden {} (Llama, seeded random init)",
            size.name(), size.layers, size.hidden, cfg.student.layers, cfg.student.hidden
        ))?;
        if ti == 0 {
            // Token caches: the corpus packed into sequences (the teacher's top-1 is not used).
            for (split, corpus) in [("tokens", "train"), ("tokens-heldout", "heldout")] {
                let cache = p(&format!("caches/{split}"));
                precompute(w, &precompute_opts(&init, corpus, &cache, 1))?;
            }
        }
        let teacher_run = p(&format!("runs/{}", named("teacher", size)));
        distill(
            w,
            &DistillOptions {
                objective: Objective::Ce,
                steps: Some(cfg.teacher_steps),
                batch_size: cfg.batch_size,
                lr: cfg.teacher_lr,
                warmup: cfg.teacher_steps / 10,
                eval_cache: Some(p("caches/tokens-heldout")),
                seed: cfg.seed,
                ..DistillOptions::new(p("caches/tokens"), &init, &teacher_run)
            },
        )?;
        teachers.push(TeacherResult {
            teacher: size.name(),
            parameters,
            ce: last_eval(&teacher_run)?.0,
        });

        // 4. The cache of the trained teacher.
        let teacher = teacher_run.join("final");
        let train_cache = p(&format!("caches/{}", named("train", size)));
        let heldout_cache = p(&format!("caches/{}", named("heldout", size)));
        for (cache, corpus) in [(&train_cache, "train"), (&heldout_cache, "heldout")] {
            precompute(w, &precompute_opts(&teacher, corpus, cache, cfg.top_k))?;
        }
        show(w, vec!["inspect".into(), d(&train_cache)])?;
        let summary = crate::inspect::inspect(&train_cache)?;
        crate::inspect::write_summary(&summary, false, &mut &mut *w)?;

        // 5. Students.
        let mut runs = Vec::new();
        for &objective in &cfg.objectives {
            let run = p(&format!(
                "runs/{}",
                if single {
                    objective.name().to_string()
                } else {
                    format!("{}/{}", size.name(), objective.name())
                }
            ));
            let steps = cfg.student_steps;
            distill(
                w,
                &DistillOptions {
                    objective,
                    steps: Some(steps),
                    batch_size: cfg.batch_size,
                    lr: cfg.student_lr,
                    warmup: steps / 10,
                    alpha: 5e-3,
                    eval_cache: Some(heldout_cache.clone()),
                    eval_every: (steps / 6).max(1),
                    seed: cfg.seed,
                    ..DistillOptions::new(&train_cache, p("models/student-init"), &run)
                },
            )?;
            let (ce, kl_teacher) = last_eval(&run)?;
            students.push(StudentResult {
                teacher: size.name(),
                objective: objective.name().to_string(),
                ce,
                kl_teacher,
            });
            runs.push(run);
        }
        let plot = p(&format!("{}.svg", named("students", size)));
        let mut words = vec!["plot".to_string()];
        words.extend(runs.iter().map(|r| d(r)));
        words.extend(["--out".to_string(), d(&plot)]);
        show(w, words)?;
        let curves = runs
            .iter()
            .map(|r| crate::plot::read_run(r))
            .collect::<Result<Vec<_>>>()?;
        crate::plot::plot(&curves, &plot)?;
        writeln!(w, "{}: {} runs plotted", plot.display(), curves.len()).at(&plot)?;
        plots.push(plot);
    }

    writeln!(w).at(out)?;
    write_table(w, &teachers, &students).at(out)?;
    let summary = DemoSummary {
        out: out.to_path_buf(),
        teachers,
        students,
        plots,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let json = p("summary.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .at(&json)?;
    let shown: Vec<String> = summary.plots.iter().map(|x| d(x)).collect();
    writeln!(
        w,
        "\ndemo finished in {:.0} s; results in {}, plots in {}",
        summary.elapsed_s,
        json.display(),
        shown.join(", ")
    )
    .at(out)?;
    Ok(summary)
}

/// The results as Markdown: teachers, then one row per student.
pub fn write_table(
    w: &mut dyn Write,
    teachers: &[TeacherResult],
    students: &[StudentResult],
) -> std::io::Result<()> {
    writeln!(w, "| teacher | parameters | teacher held-out CE |")?;
    writeln!(w, "|---|---|---|")?;
    for t in teachers {
        writeln!(w, "| {} | {} | {:.4} |", t.teacher, t.parameters, t.ce)?;
    }
    writeln!(
        w,
        "\n| teacher | student | held-out CE (nats/token) | held-out KL(teacher ‖ student) |"
    )?;
    writeln!(w, "|---|---|---|---|")?;
    for s in students {
        writeln!(
            w,
            "| {} | {} | {:.4} | {:.4} |",
            s.teacher, s.objective, s.ce, s.kl_teacher
        )?;
    }
    Ok(())
}

/// Markers of the generated part of a report.
pub const REPORT_BEGIN: &str =
    "<!-- results: written by `taidcache demo --report`; edit outside the markers -->";
pub const REPORT_END: &str = "<!-- /results -->";

/// Write the results of a run into `report` between [`REPORT_BEGIN`] and [`REPORT_END`] (the
/// rest of the file, e.g. a discussion, is kept; a new file gets only the results), and copy
/// the plots into `<report stem>/` beside it.
pub fn write_report(report: &Path, summary: &DemoSummary, command: &str) -> Result<()> {
    let dir = report
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = report
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("report");
    let figures = dir.join(stem);
    std::fs::create_dir_all(&figures).at(&figures)?;
    let mut body = Vec::new();
    writeln!(body, "{REPORT_BEGIN}\n").at(report)?;
    writeln!(
        body,
        "Command: `{command}` ({:.0} s on {} cores).\n",
        summary.elapsed_s,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )
    .at(report)?;
    write_table(&mut body, &summary.teachers, &summary.students).at(report)?;
    writeln!(body).at(report)?;
    for plot in &summary.plots {
        let name = plot
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("plot.svg");
        std::fs::copy(plot, figures.join(name)).at(plot)?;
        writeln!(body, "![{name}]({stem}/{name})\n").at(report)?;
    }
    writeln!(body, "{REPORT_END}").at(report)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let text = match std::fs::read_to_string(report) {
        Ok(old) => match (old.find("<!-- results"), old.find(REPORT_END)) {
            (Some(a), Some(b)) if a < b => format!(
                "{}{body}{}",
                &old[..a],
                &old[b + REPORT_END.len()..].trim_start_matches('\n')
            ),
            _ => format!("{old}\n{body}"),
        },
        Err(_) => body,
    };
    let tmp = report.with_extension("md.tmp");
    std::fs::write(&tmp, text).at(&tmp)?;
    std::fs::rename(&tmp, report).at(report)
}

/// Print a command line as a user would type it: `$ taidcache WORDS…`.
fn show(w: &mut dyn Write, words: Vec<String>) -> Result<()> {
    let shown: Vec<String> = words
        .into_iter()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect();
    writeln!(w, "\n$ taidcache {}", shown.join(" ")).map_err(|e| Error::io("<stdout>", e))
}

/// Print the precompute command of `opts`, then run the stage.
fn precompute(w: &mut dyn Write, opts: &PrecomputeOptions) -> Result<()> {
    show(w, command_line("precompute", opts))?;
    crate::precompute::run(opts, w).map(|_| ())
}

/// Print the distill command of `opts`, then run the stage.
fn distill(w: &mut dyn Write, opts: &DistillOptions) -> Result<()> {
    show(w, command_line("distill", opts))?;
    crate::distill::run(opts, w).map(|_| ())
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
    spec.write_config(dir)?;
    let path = dir.join(crate::model::weights::TOKENIZER_FILE);
    tokenizer
        .save(&path, false)
        .map_err(|e| Error::tokenizer(&path, e.to_string(), Some(e)))
}

/// The last eval line of a run: (ce, kl_teacher).
fn last_eval(run: &Path) -> Result<(f64, f64)> {
    let path = run.join(METRICS_FILE);
    metrics::read(&path)?
        .into_iter()
        .rfind(|l| l.is_eval())
        .and_then(|l| Some((l.ce?, l.kl_teacher?)))
        .ok_or_else(|| Error::field(&path, "split", "the run has no eval line"))
}
