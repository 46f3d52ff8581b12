//! The trainable student: gradients reach every parameter, the training forward equals the
//! inference forward, and a saved student reloads with identical logits in the HF layout.

use crate::common::ALL_ARCHS;
use candle_core::{DType, Device, Tensor};
use taidcache::model::train::Student;
use taidcache::model::weights::{expected_tensors, read_header};
use taidcache::model::{Mode, ModelDir};
use taidcache::testing::{write_tiny_model, Normal, TinySpec};

fn tiny_student(arch: taidcache::model::Architecture, dir: &std::path::Path) -> Student {
    write_tiny_model(dir, &TinySpec::new(arch, 96), None).unwrap();
    Student::from_dir(dir, 0, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn ids() -> Tensor {
    let ids: Vec<u32> = (0..2 * 12).map(|i| (i * 37 % 96) as u32).collect();
    Tensor::from_vec(ids, (2, 12), &Device::Cpu).unwrap()
}

#[test]
fn every_parameter_receives_a_nonzero_gradient_under_forward_train() {
    for arch in ALL_ARCHS {
        let dir = tempfile::tempdir().unwrap();
        let s = tiny_student(arch, dir.path());
        let logits = s.model.forward(&ids(), Mode::Train).unwrap();
        let mut rng = Normal::new(5);
        let w: Vec<f32> = (0..logits.elem_count()).map(|_| rng.sample()).collect();
        let w = Tensor::from_vec(w, logits.shape(), &Device::Cpu).unwrap();
        let loss = (logits * w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in &s.params {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{arch:?}: no gradient for {name}"));
            let max = g
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(max > 0.0, "{arch:?}: zero gradient for {name}");
        }
    }
}

#[test]
fn forward_train_equals_forward_infer() {
    for arch in ALL_ARCHS {
        let dir = tempfile::tempdir().unwrap();
        let s = tiny_student(arch, dir.path());
        let a = s.model.forward(&ids(), Mode::Train).unwrap();
        let b = s.model.forward(&ids(), Mode::Infer).unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            d <= 1e-5,
            "{arch:?}: train and infer forwards differ by {d}"
        );
    }
}

#[test]
fn saved_student_reloads_with_identical_logits_in_the_hf_layout() {
    for arch in ALL_ARCHS {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let s = tiny_student(arch, &src);
        let before = s.model.forward(&ids(), Mode::Infer).unwrap();
        let out = dir.path().join("saved");
        s.save_hf(&out, DType::F32, None).unwrap();
        let dirm = ModelDir::open(&out).unwrap();
        let after = dirm
            .load(DType::F32, &Device::Cpu)
            .unwrap()
            .forward(&ids(), Mode::Infer)
            .unwrap();
        let d = max_abs_diff(&before, &after);
        assert_eq!(d, 0.0, "{arch:?}: reloaded logits differ by {d}");
        // Exactly the HF tensor names and shapes, f32, nothing else.
        let (_, shapes) = read_header(&out.join("model.safetensors")).unwrap();
        let want: std::collections::BTreeMap<String, Vec<usize>> =
            expected_tensors(&dirm.config).into_iter().collect();
        assert_eq!(shapes, want, "{arch:?}");
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["dtype"], "float32");

        // bf16 on disk: every tensor BF16, logits within bf16 rounding.
        let out16 = dir.path().join("saved16");
        s.save_hf(&out16, DType::BF16, None).unwrap();
        let header = std::fs::read(out16.join("model.safetensors")).unwrap();
        let n = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
        let h: serde_json::Value = serde_json::from_slice(&header[8..8 + n]).unwrap();
        for (name, info) in h.as_object().unwrap() {
            if name != "__metadata__" {
                assert_eq!(info["dtype"], "BF16", "{name}");
            }
        }
    }
}

#[test]
fn config_only_directory_gives_a_seeded_random_student() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::new(taidcache::model::Architecture::Qwen3, 96);
    std::fs::write(
        dir.path().join("config.json"),
        spec.config_json().to_string(),
    )
    .unwrap();
    let a = Student::from_dir(dir.path(), 7, &Device::Cpu).unwrap();
    let b = Student::from_dir(dir.path(), 7, &Device::Cpu).unwrap();
    let c = Student::from_dir(dir.path(), 8, &Device::Cpu).unwrap();
    let la = a.model.forward(&ids(), Mode::Infer).unwrap();
    let lb = b.model.forward(&ids(), Mode::Infer).unwrap();
    let lc = c.model.forward(&ids(), Mode::Infer).unwrap();
    assert_eq!(max_abs_diff(&la, &lb), 0.0, "same seed, same student");
    assert!(
        max_abs_diff(&la, &lc) > 1e-4,
        "another seed, another student"
    );
}

/// Every tensor (name, shape, dtype) of what `transformers.save_pretrained` wrote, over all the
/// checkpoint's files.
fn hf_tensors(dir: &std::path::Path) -> std::collections::BTreeMap<String, (Vec<usize>, String)> {
    let mut out = std::collections::BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        for (name, info) in h.as_object().unwrap() {
            if name == "__metadata__" {
                continue;
            }
            let shape = info["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            out.insert(
                name.clone(),
                (shape, info["dtype"].as_str().unwrap().to_string()),
            );
        }
    }
    out
}

/// The golden fixtures are checkpoints written by transformers itself (and reloaded by
/// `AutoModelForCausalLM.from_pretrained` in `make_golden.py`): a student initialized from one
/// and saved again carries exactly the same tensor names, shapes and dtypes, and a config.json
/// with the same architecture keys, so transformers loads it the same way.
#[test]
fn a_saved_student_has_the_layout_transformers_wrote() {
    for name in ["llama", "mistral", "qwen2", "qwen3", "phi3"] {
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/forward")
            .join(name);
        let s = Student::from_dir(&golden, 0, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("saved");
        s.save_hf(&out, DType::F32, None).unwrap();
        assert_eq!(
            hf_tensors(&out),
            hf_tensors(&golden),
            "{name}: tensors differ from what transformers wrote"
        );
        let read = |p: std::path::PathBuf| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let (a, b) = (
            read(out.join("config.json")),
            read(golden.join("config.json")),
        );
        for key in [
            "model_type",
            "architectures",
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "tie_word_embeddings",
        ] {
            assert_eq!(a[key], b[key], "{name}: config.json `{key}`");
        }
        // And the saved weights give the fixture's logits.
        let before = ModelDir::open(&golden)
            .unwrap()
            .load(DType::F32, &Device::Cpu)
            .unwrap()
            .forward(&ids(), Mode::Infer)
            .unwrap();
        let after = ModelDir::open(&out)
            .unwrap()
            .load(DType::F32, &Device::Cpu)
            .unwrap()
            .forward(&ids(), Mode::Infer)
            .unwrap();
        let d = max_abs_diff(&before, &after);
        assert_eq!(d, 0.0, "{name}: logits differ by {d} after a save");
    }
}
