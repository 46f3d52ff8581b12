//! Every config in pipelines/ parses and resolves to valid options; the Slurm script is valid
//! bash.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use taidcache::cli::{Cli, Command};

fn pipeline_files(ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

#[test]
fn every_pipeline_config_resolves_and_validates() {
    let files = pipeline_files("toml");
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "demo.toml",
        "qwen2-72b-to-1.5b.toml",
        "phi3-mini-to-tinyllama.toml",
        "cluster-precompute.toml",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "pipelines/{wanted} missing"
        );
    }
    for path in &files {
        let mut stages = 0;
        if !taidcache::config::read_section(path, "precompute")
            .unwrap()
            .is_empty()
        {
            let opts =
                resolve_precompute(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(opts.top_k >= 1 && opts.seq_len >= 1, "{}", path.display());
            stages += 1;
        }
        if !taidcache::config::read_section(path, "distill")
            .unwrap()
            .is_empty()
        {
            let opts = resolve_distill(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            opts.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            stages += 1;
        }
        assert!(
            stages >= 1,
            "{} has no [precompute] or [distill] table",
            path.display()
        );
    }
}

#[test]
fn paper_recipes_carry_the_papers_hyper_parameters() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let resolve = |name: &str| resolve_distill(&dir.join(name)).unwrap();
    let q = resolve("qwen2-72b-to-1.5b.toml");
    assert_eq!((q.t_start, q.alpha, q.beta, q.lr), (0.4, 5e-5, 0.99, 1e-5));
    assert_eq!(q.batch_size * q.grad_accum, 64);
    assert!(
        q.recompute,
        "a 1.5B student at 8 × 2048 fits one GPU only with recompute"
    );
    let p = resolve("phi3-mini-to-tinyllama.toml");
    assert_eq!(
        (p.t_start, p.alpha, p.lr, p.epochs),
        (0.4, 5e-4, 1e-4, Some(5.0))
    );
    assert_eq!(p.batch_size * p.grad_accum, 64);
}

#[test]
fn slurm_script_is_valid_bash_and_runs_workers_and_merge() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/slurm-precompute.sh");
    let out = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&script).unwrap();
    for needle in [
        "--worker \"$WORKER\"",
        "--workers \"$WORKERS\"",
        "SLURM_ARRAY_TASK_ID",
        " merge ",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from the Slurm script"
        );
    }
}

/// The demo-size files (`taidcache demo --sizes FILE`, e.g. `make replicate`'s) parse into
/// the demo's sizes, with at least one teacher and one objective each.
#[test]
fn every_demo_sizes_file_parses() {
    let files = pipeline_files("json");
    assert!(
        files.iter().any(|p| p.ends_with("replicate.json")),
        "pipelines/replicate.json missing"
    );
    for path in files {
        let cfg: taidcache::demo::DemoConfig =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            !cfg.teachers.is_empty() && !cfg.objectives.is_empty(),
            "{}",
            path.display()
        );
        // Unknown objectives fail to parse above; each one's name is its flag value.
        for o in &cfg.objectives {
            assert_eq!(
                <taidcache::distill::objectives::Objective as clap::ValueEnum>::from_str(
                    o.name(),
                    false
                ),
                Ok(*o),
                "{}: objective {o:?}",
                path.display()
            );
        }
    }
}

/// The options `taidcache precompute --config FILE` runs with.
fn resolve_precompute(file: &Path) -> taidcache::Result<taidcache::precompute::PrecomputeOptions> {
    let cli = Cli::try_resolve_from([
        OsStr::new("taidcache"),
        OsStr::new("precompute"),
        OsStr::new("--config"),
        file.as_os_str(),
    ])?;
    match cli.command {
        Command::Precompute(o) => Ok(*o),
        _ => unreachable!("parsed as precompute"),
    }
}

/// The options `taidcache distill --config FILE` runs with.
fn resolve_distill(file: &Path) -> taidcache::Result<taidcache::distill::DistillOptions> {
    let cli = Cli::try_resolve_from([
        OsStr::new("taidcache"),
        OsStr::new("distill"),
        OsStr::new("--config"),
        file.as_os_str(),
    ])?;
    match cli.command {
        Command::Distill(o) => Ok(*o),
        _ => unreachable!("parsed as distill"),
    }
}
