//! `taidcache demo`, scaled down: the whole pipeline through the public subcommands, printing
//! each command, a student table, a summary and a plot.

use std::path::Path;

fn eval_kl(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "eval")
        .map(|v| v["kl_teacher"].as_f64().unwrap())
        .collect()
}

#[test]
fn a_small_demo_runs_every_stage_and_reports_three_students() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = dir.path().join("sizes.json");
    std::fs::write(
        &sizes,
        serde_json::json!({
            "train_docs": 300, "heldout_docs": 40, "vocab_size": 300, "seq_len": 32,
            "teachers": [{"layers": 2, "hidden": 64}], "teacher_steps": 60, "teacher_lr": 3e-3,
            "student": {"layers": 1, "hidden": 32}, "student_steps": 40, "student_lr": 5e-3,
            "batch_size": 8, "top_k": 16, "seed": 3
        })
        .to_string(),
    )
    .unwrap();
    let out = dir.path().join("demo");
    let report = dir.path().join("docs/report.md");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    std::fs::write(
        &report,
        "# Report\n\n<!-- results: old -->\n<!-- /results -->\n\n## Discussion\nkept\n",
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args([
            "demo",
            "--out",
            out.to_str().unwrap(),
            "--sizes",
            sizes.to_str().unwrap(),
        ])
        .args(["--report", report.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Every stage ran through the CLI and was printed as a user would type it.
    for cmd in [
        "$ taidcache precompute",
        "$ taidcache distill",
        "$ taidcache inspect",
        "$ taidcache plot",
    ] {
        assert!(stdout.contains(cmd), "`{cmd}` not printed:\n{stdout}");
    }
    assert_eq!(
        stdout.matches("$ taidcache distill").count(),
        4,
        "teacher + three students"
    );
    for student in ["| taid |", "| kl |", "| ce |"] {
        assert!(
            stdout.contains(student),
            "{student} missing from the table:\n{stdout}"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let students = summary["students"].as_array().unwrap();
    assert_eq!(students.len(), 3);
    for s in students {
        let (ce, kl) = (s["ce"].as_f64().unwrap(), s["kl_teacher"].as_f64().unwrap());
        assert!(
            ce.is_finite() && ce > 0.0 && kl.is_finite() && kl >= 0.0,
            "{s}"
        );
    }
    // The distilled students moved toward the teacher on held-out data.
    for name in ["taid", "kl"] {
        let kl = eval_kl(&out.join("runs").join(name));
        assert!(
            kl.len() >= 2 && kl.last().unwrap() < &kl[0],
            "{name}: held-out KL {kl:?}"
        );
    }
    let svg = std::fs::read_to_string(out.join("students.svg")).unwrap();
    assert!(svg.contains("optimizer step") && svg.contains("taid") && svg.contains("ce"));
    // The report: results between the markers, the discussion kept, the plot copied beside it.
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        text.starts_with("# Report\n") && text.contains("## Discussion\nkept"),
        "{text}"
    );
    assert!(
        text.contains("| taid |") && text.contains("--sizes") && !text.contains("results: old"),
        "{text}"
    );
    assert!(dir.path().join("docs/report/students.svg").exists());
    // The cache the students learned from verifies.
    let v = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args(["verify", out.join("caches/train").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}
