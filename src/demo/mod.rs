//! `taidcache demo`: the whole product on an embedded default, with no download and no GPU.
//!
//! 1. A corpus from a seeded stochastic grammar ([`grammar`]), with a held-out split; the
//!    students' slice is the first `student_docs` training documents.
//! 2. A byte-level BPE tokenizer trained on it with the `tokenizers` crate.
//! 3. A teacher trained with `distill --objective ce` on the whole training split (from a
//!    token cache of the untrained teacher: `precompute --top-k 1` packs the corpus; only the
//!    tokens are used).
//! 4. `precompute` of the trained teacher with k = 50 over the students' slice and the held-out
//!    split; `inspect`.
//! 5. Students of one small config distilled from that cache (`taid`, `kl`, `rkl`, `ce`, one
//!    per seed), evaluated on the held-out cache; a table (mean ± standard deviation over the
//!    seeds, and in words whether distillation beat the `ce` student, which sees the same
//!    tokens without the teacher) and plots (SVG and PNG).
//!
//! Distillation pays where the teacher knows more than the student can learn from its own
//! data: here the teacher learned from ten times the documents the students see, as a large
//! model trained on a large corpus is distilled on a smaller one.
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
    /// The students' training documents: the first N of the teachers' (0: all of them).
    /// Distillation pays where the teacher learned from more than the student sees.
    pub student_docs: usize,
    pub student: Size,
    /// The objectives distilled from every teacher's cache, one student each.
    pub objectives: Vec<Objective>,
    pub student_steps: u64,
    pub student_lr: f64,
    pub batch_size: usize,
    pub top_k: usize,
    pub seed: u64,
    /// Students per (teacher, objective), with seeds `seed`, `seed + 1`, … (init and data
    /// order); the table gives their mean ± standard deviation.
    pub seeds: usize,
    /// TAID's α (`distill --alpha`), the step size of t's adaptive update. The paper's 5e-4
    /// (Appendix D) is for runs of thousands of steps; the adaptive term moves t by about
    /// α/2·(1 − t) a step, which outruns the linear floor's (t_end − t_start)/N early in a run
    /// only when α·N is of the order of 10 or more: 2e-2 at the demo's 300 steps is α·N = 6;
    /// the paper's 5e-4 reaches that at 12,000 steps.
    pub taid_alpha: f64,
    /// Extra `taid` students at these α (the first teacher, the first seed), whose t is plotted
    /// against its linear floor: the paper's Figure 2 (left).
    pub alpha_sweep: Vec<f64>,
}

impl Default for DemoConfig {
    /// `make demo`: a teacher trained on 3,000 documents, students distilled from its cache
    /// of the first 300 of them, where the data alone is too little for a student and the
    /// teacher's soft labels carry what it learned from the rest.
    fn default() -> Self {
        Self {
            train_docs: 3000,
            heldout_docs: 200,
            vocab_size: 1024,
            seq_len: 128,
            teachers: vec![Size {
                layers: 3,
                hidden: 128,
            }],
            teacher_steps: 1000,
            teacher_lr: 3e-3,
            student_docs: 300,
            student: Size {
                layers: 2,
                hidden: 96,
            },
            objectives: vec![
                Objective::Taid,
                Objective::Kl,
                Objective::Rkl,
                Objective::Ce,
            ],
            student_steps: 300,
            student_lr: 3e-3,
            batch_size: 8,
            top_k: 50,
            seed: 0,
            seeds: 1,
            taid_alpha: 2e-2,
            alpha_sweep: Vec::new(),
        }
    }
}

/// One student's held-out result.
#[derive(Clone, Debug, Serialize)]
pub struct StudentResult {
    pub teacher: String,
    pub objective: String,
    pub seed: u64,
    pub ce: f64,
    pub kl_teacher: f64,
    /// Held-out expected calibration error of the student's top-1 probability (15 bins).
    pub ece: f64,
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
    if cfg.teachers.is_empty() || cfg.objectives.is_empty() || cfg.seeds == 0 {
        return Err(Error::flag(
            "--sizes",
            "`teachers` and `objectives` need at least one entry each, and `seeds` at least 1",
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
    // The students' slice: the first documents of the teachers' corpus.
    let student_docs = match cfg.student_docs {
        0 => train.len(),
        n => n.min(train.len()),
    };
    write_jsonl(&p("corpus/students.jsonl"), &train[..student_docs])?;
    let refs: Vec<&str> = train.iter().map(String::as_str).collect();
    let tokenizer = train_bpe(&refs, cfg.vocab_size);
    let vocab = tokenizer.get_vocab_size(true);
    say(w, format!(
        "# corpus: {} training documents for the teachers, the first {student_docs} of them for the students, {} held-out documents, from the demo grammar in {}; BPE tokenizer of {vocab} tokens",
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
            ce: last_eval(&teacher_run)?.ce,
        });

        // 4. The cache of the trained teacher.
        let teacher = teacher_run.join("final");
        let train_cache = p(&format!("caches/{}", named("train", size)));
        let heldout_cache = p(&format!("caches/{}", named("heldout", size)));
        for (cache, corpus) in [(&train_cache, "students"), (&heldout_cache, "heldout")] {
            precompute(w, &precompute_opts(&teacher, corpus, cache, cfg.top_k))?;
        }
        show(w, vec!["inspect".into(), d(&train_cache)])?;
        let summary = crate::inspect::inspect(&train_cache)?;
        crate::inspect::write_summary(&summary, false, &mut &mut *w)?;

        // 5. Students: every objective at every seed, then (first teacher) the α sweep.
        let mut runs = Vec::new();
        let mut jobs: Vec<(Objective, u64, f64, String)> = Vec::new();
        for &objective in &cfg.objectives {
            for i in 0..cfg.seeds as u64 {
                let name = if cfg.seeds == 1 {
                    objective.name().to_string()
                } else {
                    format!("{}-seed-{}", objective.name(), cfg.seed + i)
                };
                jobs.push((objective, cfg.seed + i, cfg.taid_alpha, name));
            }
        }
        if ti == 0 {
            for &alpha in &cfg.alpha_sweep {
                jobs.push((
                    Objective::Taid,
                    cfg.seed,
                    alpha,
                    format!("taid-alpha-{alpha}"),
                ));
            }
        }
        let (mut sweep, mut sweep_taid) = (Vec::new(), None);
        for (objective, seed, alpha, name) in jobs {
            let run = p(&format!(
                "runs/{}",
                if single {
                    name.clone()
                } else {
                    format!("{}/{name}", size.name())
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
                    alpha,
                    eval_cache: Some(heldout_cache.clone()),
                    eval_every: (steps / 6).max(1),
                    seed,
                    ..DistillOptions::new(&train_cache, p("models/student-init"), &run)
                },
            )?;
            if name.starts_with("taid-alpha-") {
                sweep.push(run);
                continue;
            }
            let Eval {
                ce,
                kl_teacher,
                ece,
            } = last_eval(&run)?;
            students.push(StudentResult {
                teacher: size.name(),
                objective: objective.name().to_string(),
                seed,
                ce,
                kl_teacher,
                ece,
            });
            // The plot shows the first seed of each objective.
            if seed == cfg.seed {
                if objective == Objective::Taid {
                    sweep_taid = Some(run.clone());
                }
                runs.push(run);
            }
        }
        if !sweep.is_empty() {
            // t against its floor for several α, with the α of the table's taid student.
            sweep.extend(sweep_taid);
            plots.extend(plot_runs(w, &sweep, &p("taid-alpha.svg"))?);
        }
        plots.extend(plot_runs(
            w,
            &runs,
            &p(&format!("{}.svg", named("students", size))),
        )?);
    }

    if teachers.len() > 1 {
        plots.extend(plot_by_teacher(
            w,
            &teachers,
            &students,
            &p("students-by-teacher.svg"),
        )?);
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

/// Mean and sample standard deviation (0 for a single value).
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// One (teacher, objective) cell of the student table: its seeds' results.
struct Cell<'a> {
    teacher: &'a str,
    objective: &'a str,
    ce: Vec<f64>,
    kl: Vec<f64>,
    ece: Vec<f64>,
}

impl Cell<'_> {
    fn ce(&self) -> (f64, f64) {
        mean_sd(&self.ce)
    }

    /// Standard error of the mean CE.
    fn ce_se(&self) -> f64 {
        self.ce().1 / (self.ce.len() as f64).sqrt()
    }
}

/// `mean` or, over several seeds, `mean ± sd`.
fn cell(xs: &[f64], digits: usize) -> String {
    let (m, sd) = mean_sd(xs);
    if xs.len() > 1 {
        format!("{m:.digits$} ± {sd:.digits$}")
    } else {
        format!("{m:.digits$}")
    }
}

/// The results as Markdown: teachers, then one row per (teacher, objective) with the mean ±
/// standard deviation over its seeds, then for each teacher whether distillation beat the `ce`
/// student (the student trained on the tokens alone), in words.
pub fn write_table(
    w: &mut dyn Write,
    teachers: &[TeacherResult],
    students: &[StudentResult],
) -> std::io::Result<()> {
    writeln!(
        w,
        "| teacher | parameters | teacher held-out CE | perplexity |"
    )?;
    writeln!(w, "|---|---|---|---|")?;
    for t in teachers {
        writeln!(
            w,
            "| {} | {} | {:.4} | {:.2} |",
            t.teacher,
            t.parameters,
            t.ce,
            t.ce.exp()
        )?;
    }
    let mut cells: Vec<Cell> = Vec::new();
    for s in students {
        match cells
            .iter_mut()
            .find(|c| c.teacher == s.teacher && c.objective == s.objective)
        {
            Some(c) => {
                c.ce.push(s.ce);
                c.kl.push(s.kl_teacher);
                c.ece.push(s.ece);
            }
            None => cells.push(Cell {
                teacher: &s.teacher,
                objective: &s.objective,
                ce: vec![s.ce],
                kl: vec![s.kl_teacher],
                ece: vec![s.ece],
            }),
        }
    }
    let ce_of = |teacher: &str| {
        cells
            .iter()
            .find(|c| c.teacher == teacher && c.objective == Objective::Ce.name())
    };
    writeln!(
        w,
        "\n| teacher | student | seeds | held-out CE (nats/token) | perplexity | CE − `ce` student's | held-out KL(teacher ‖ student) | held-out ECE |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|---|---|")?;
    for c in &cells {
        let (ce, _) = c.ce();
        let versus = ce_of(c.teacher).map_or("".to_string(), |b| format!("{:+.4}", ce - b.ce().0));
        writeln!(
            w,
            "| {} | {} | {} | {} | {:.2} | {versus} | {} | {} |",
            c.teacher,
            c.objective,
            c.ce.len(),
            cell(&c.ce, 4),
            ce.exp(),
            cell(&c.kl, 4),
            cell(&c.ece, 4),
        )?;
    }
    let mut seen: Vec<&str> = Vec::new();
    for c in &cells {
        if seen.contains(&c.teacher) {
            continue;
        }
        seen.push(c.teacher);
        let (Some(base), Some(best)) = (
            ce_of(c.teacher),
            cells
                .iter()
                .filter(|d| d.teacher == c.teacher && d.objective != Objective::Ce.name())
                .min_by(|a, b| a.ce().0.total_cmp(&b.ce().0)),
        ) else {
            continue;
        };
        let (b, d) = (base.ce().0, best.ce().0);
        let se = (base.ce_se().powi(2) + best.ce_se().powi(2)).sqrt();
        let sig = if se > 0.0 {
            format!(", {:.1} standard errors", (b - d).abs() / se)
        } else {
            String::new()
        };
        if d < b {
            writeln!(
                w,
                "\n**{}: distillation pays.** The best distilled student (`{}`, held-out CE {d:.4}) beats the `ce` student, trained on the same tokens without the teacher ({b:.4}), by {:.4} nats/token{sig}.",
                c.teacher,
                best.objective,
                b - d
            )?;
        } else {
            writeln!(
                w,
                "\n**{}: distillation does not pay here.** The `ce` student, trained on the same tokens without the teacher (held-out CE {b:.4}), beats every distilled student (the best: `{}`, {d:.4}){sig}.",
                c.teacher, best.objective
            )?;
        }
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
        // Each plot is written as SVG and PNG; the report shows (and keeps) the SVG.
        if name.ends_with(".svg") {
            std::fs::copy(plot, figures.join(name)).at(plot)?;
            writeln!(body, "![{name}]({stem}/{name})\n").at(report)?;
        }
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

/// Each objective's held-out CE (mean ± sd over seeds) against the teacher's parameters, as SVG
/// and PNG: both paths.
fn plot_by_teacher(
    w: &mut dyn Write,
    teachers: &[TeacherResult],
    students: &[StudentResult],
    svg: &Path,
) -> Result<[PathBuf; 2]> {
    let mut series: Vec<crate::plot::TeacherSeries> = Vec::new();
    for s in students {
        if !series.iter().any(|x| x.label == s.objective) {
            series.push(crate::plot::TeacherSeries {
                label: s.objective.clone(),
                points: Vec::new(),
            });
        }
    }
    for line in &mut series {
        for t in teachers {
            let ce: Vec<f64> = students
                .iter()
                .filter(|s| s.teacher == t.teacher && s.objective == line.label)
                .map(|s| s.ce)
                .collect();
            if !ce.is_empty() {
                let (m, sd) = mean_sd(&ce);
                line.points.push((t.parameters as f64, m, sd));
            }
        }
    }
    let png = svg.with_extension("png");
    for out in [svg, &png] {
        crate::plot::plot_by_teacher(&series, out)?;
        writeln!(
            w,
            "{}: students' held-out CE by teacher size",
            out.display()
        )
        .at(out)?;
    }
    Ok([svg.to_path_buf(), png])
}

/// `taidcache plot RUNS --out SVG`, and the same plot as a PNG beside it: both paths.
fn plot_runs(w: &mut dyn Write, runs: &[PathBuf], svg: &Path) -> Result<[PathBuf; 2]> {
    let curves = runs
        .iter()
        .map(|r| crate::plot::read_run(r))
        .collect::<Result<Vec<_>>>()?;
    let png = svg.with_extension("png");
    for out in [svg, &png] {
        let mut words = vec!["plot".to_string()];
        words.extend(runs.iter().map(|r| r.display().to_string()));
        words.extend(["--out".to_string(), out.display().to_string()]);
        show(w, words)?;
        crate::plot::plot(&curves, out)?;
        writeln!(w, "{}: {} runs plotted", out.display(), curves.len()).at(out)?;
    }
    Ok([svg.to_path_buf(), png])
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

/// A run's last evaluation.
struct Eval {
    ce: f64,
    kl_teacher: f64,
    /// NaN where the run logged none.
    ece: f64,
}

/// The last eval line of a run.
fn last_eval(run: &Path) -> Result<Eval> {
    let path = run.join(METRICS_FILE);
    metrics::read(&path)?
        .into_iter()
        .rfind(|l| l.is_eval())
        .and_then(|l| {
            Some(Eval {
                ce: l.ce?,
                kl_teacher: l.kl_teacher?,
                ece: l.ece.unwrap_or(f64::NAN),
            })
        })
        .ok_or_else(|| Error::field(&path, "split", "the run has no eval line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn student(objective: &str, seed: u64, ce: f64) -> StudentResult {
        StudentResult {
            teacher: "L1-H8".into(),
            objective: objective.into(),
            seed,
            ce,
            kl_teacher: ce / 10.0,
            ece: ce / 100.0,
        }
    }

    fn table(students: &[StudentResult]) -> String {
        let teachers = [TeacherResult {
            teacher: "L1-H8".into(),
            parameters: 10,
            ce: 1.0,
        }];
        let mut out = Vec::new();
        write_table(&mut out, &teachers, students).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_table_gives_mean_and_sample_sd_over_seeds_and_says_whether_distillation_paid() {
        assert_eq!(mean_sd(&[1.0, 2.0, 3.0]), (2.0, 1.0));
        assert_eq!(mean_sd(&[4.0]), (4.0, 0.0));
        let paid = table(&[
            student("kl", 0, 3.0),
            student("kl", 1, 3.2),
            student("ce", 0, 3.5),
            student("ce", 1, 3.5),
        ]);
        // kl: mean 3.1, sd 0.1414; 0.4 nats better than ce; se = 0.1414/√2 = 0.1 → 4.0 se.
        assert!(
            paid.contains(
                "| L1-H8 | kl | 2 | 3.1000 ± 0.1414 | 22.20 | -0.4000 | 0.3100 ± 0.0141 | 0.0310 ± 0.0014 |"
            ),
            "{paid}"
        );
        assert!(
            paid.contains("| L1-H8 | ce | 2 | 3.5000 ± 0.0000 | 33.12 | +0.0000 |"),
            "{paid}"
        );
        assert!(paid.contains("**L1-H8: distillation pays.** The best distilled student (`kl`, held-out CE 3.1000)"), "{paid}");
        assert!(
            paid.contains("by 0.4000 nats/token, 4.0 standard errors."),
            "{paid}"
        );
        let lost = table(&[
            student("taid", 0, 3.6),
            student("kl", 0, 3.7),
            student("ce", 0, 3.5),
        ]);
        assert!(
            lost.contains("| L1-H8 | taid | 1 | 3.6000 | 36.60 | +0.1000 | 0.3600 | 0.0360 |"),
            "{lost}"
        );
        assert!(
            lost.contains("**L1-H8: distillation does not pay here.**")
                && lost.contains("(the best: `taid`, 3.6000)."),
            "{lost}"
        );
    }
}
