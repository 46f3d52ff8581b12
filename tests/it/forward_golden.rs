//! The inference and training forwards of every architecture against golden logits from
//! PyTorch transformers (tests/golden/forward/make_golden.py produced them).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use taidcache::model::{Mode, ModelDir};

struct Golden {
    input_ids: Vec<Vec<u32>>,
    logits: Vec<Vec<Vec<f32>>>,
    tolerance: f32,
}

fn golden_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/forward")
        .join(name)
}

fn load_golden(dir: &Path) -> Golden {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    Golden {
        input_ids: serde_json::from_value(v["input_ids"].clone()).unwrap(),
        logits: serde_json::from_value(v["logits"].clone()).unwrap(),
        tolerance: v["tolerance"].as_f64().unwrap() as f32,
    }
}

/// Largest |ours − golden| over every logit of the batch.
fn max_error(dir: &Path, mode: Mode) -> f32 {
    let g = load_golden(dir);
    let model = ModelDir::open(dir)
        .unwrap()
        .load(DType::F32, &Device::Cpu)
        .unwrap();
    let (b, t) = (g.input_ids.len(), g.input_ids[0].len());
    let ids: Vec<u32> = g.input_ids.concat();
    let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap();
    let ours: Vec<Vec<Vec<f32>>> = model.forward(&ids, mode).unwrap().to_vec3().unwrap();
    let mut worst = 0f32;
    for (x, y) in ours
        .iter()
        .flatten()
        .flatten()
        .zip(g.logits.iter().flatten().flatten())
    {
        worst = worst.max((x - y).abs());
    }
    assert_eq!(
        ours.iter().flatten().flatten().count(),
        g.logits.iter().flatten().flatten().count()
    );
    worst
}

fn check(name: &str) {
    let dir = golden_dir(name);
    let tol = load_golden(&dir).tolerance;
    for mode in [Mode::Infer, Mode::Train] {
        let err = max_error(&dir, mode);
        eprintln!("{name} {mode:?}: max |Δlogit| = {err:.2e}");
        assert!(err <= tol, "{name} {mode:?}: max |Δlogit| = {err} > {tol}");
    }
}

#[test]
fn llama3_rope_scaling_sharded_checkpoint_matches_transformers() {
    check("llama");
}

#[test]
fn mistral_sliding_window_with_transformers_4_config_matches_transformers() {
    check("mistral");
}

#[test]
fn qwen2_tied_embeddings_and_qkv_bias_match_transformers() {
    check("qwen2");
}

#[test]
fn qwen3_qk_norm_and_explicit_head_dim_match_transformers() {
    check("qwen3");
}

#[test]
fn phi3_fused_projections_match_transformers() {
    check("phi3");
}

#[test]
fn llama_config_in_transformers_4_layout_gives_the_same_logits() {
    let src = golden_dir("llama");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let o = cfg.as_object_mut().unwrap();
    let mut rope = o.remove("rope_parameters").unwrap();
    let theta = rope.as_object_mut().unwrap().remove("rope_theta").unwrap();
    o.insert("rope_theta".into(), theta);
    o.insert("rope_scaling".into(), rope);
    let dtype = o.remove("dtype").unwrap();
    o.insert("torch_dtype".into(), dtype);
    o.remove("head_dim");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let err = max_error(dir.path(), Mode::Infer);
    assert!(err <= 1e-4, "4.x layout: max |Δlogit| = {err}");
}
