//! What quantization costs a real teacher: KL(reference ‖ quantized) per GGUF type, over real
//! text, with top-1 agreement and file size. `make gguf-kl` runs it on the demo-real teacher
//! (SmolLM2-135M-Instruct, whose only published PyPI copy is Q4_1):
//!
//! ```sh
//! cargo bench --bench gguf_quant_kl -- --gguf FILE.gguf --text a.txt [--text b.txt] \
//!     [--tokens 1024] [--seq-len 256] [--work target/gguf-kl] [--out target/bench-results/gguf_quant_kl.json] \
//!     [--type BF16 --type Q8_0 ...]
//! ```
//!
//! The reference is the given file's weights dequantized to f32 (for SmolLM2 that is its Q4_1
//! weights: the figures are what a second quantization costs on top of them, the closest this
//! machine gets to KL(bf16 ‖ quantized) without a dense copy of a real model). Every matrix is
//! quantized from those f32 values with candle's quantizers (llama.cpp's reference ones, no
//! importance matrix) and written as a GGUF file with the same metadata; a matrix whose rows
//! are not a multiple of the type's block takes llama.cpp's fallback type (Q4_K → Q5_0, Q5_K →
//! Q5_1, Q6_K → Q8_0, Q2_K/Q3_K → Q4_0; SmolLM2's hidden size 576 is not a multiple of 256, so
//! its K-quant files are mostly fallback: the table says how many matrices are really K).
//! Each file is loaded as `precompute` loads it (so on the CPU Q4_1, Q5_0 and Q5_1 are
//! dequantized, and the others multiply with 8-bit activations) and run over the same tokens.

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, D};
use taidcache::model::gguf::{self, GgufModel};
use taidcache::model::Mode;

struct Args {
    gguf: PathBuf,
    text: Vec<PathBuf>,
    tokens: usize,
    seq_len: usize,
    work: PathBuf,
    out: PathBuf,
    /// Only these rows (`--type`, repeatable; as printed: BF16, F16, Q8_0, Q6K, ...).
    types: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        gguf: PathBuf::new(),
        text: Vec::new(),
        tokens: 1024,
        seq_len: 256,
        work: "target/gguf-kl".into(),
        out: "target/bench-results/gguf_quant_kl.json".into(),
        types: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--gguf" => a.gguf = value().into(),
            "--text" => a.text.push(value().into()),
            "--tokens" => a.tokens = value().parse().expect("--tokens"),
            "--seq-len" => a.seq_len = value().parse().expect("--seq-len"),
            "--work" => a.work = value().into(),
            "--out" => a.out = value().into(),
            "--type" => a.types.push(value()),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(!a.gguf.as_os_str().is_empty(), "--gguf FILE is required");
    assert!(!a.text.is_empty(), "--text FILE is required");
    a
}

/// `[positions, vocab]` log-probs of the model in `path` over `ids`, and the forward's tokens/s
/// (the median of three forwards; loading excluded). `bf16`: its dense layers rounded to bf16
/// and multiplied by the CPU's bf16 products, as `precompute --dtype bf16` runs it on the CPU.
fn logprobs(path: &Path, ids: &Tensor, bf16: bool) -> (Vec<Vec<f32>>, f64) {
    let model = GgufModel::open(path).unwrap();
    let mut decoder = model.load(DType::F32, &Device::Cpu).unwrap();
    if bf16 {
        decoder = decoder.with_bf16_products().unwrap();
    }
    let mut times = Vec::new();
    let mut logits = None;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let l = decoder.forward(ids, Mode::Infer).unwrap();
        times.push(t0.elapsed().as_secs_f64());
        logits = Some(l);
    }
    times.sort_by(f64::total_cmp);
    let tps = ids.elem_count() as f64 / times[1];
    let logits = logits.unwrap();
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let v = lp.dim(D::Minus1).unwrap();
    let lp = lp
        .reshape((ids.elem_count(), v))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    (lp, tps)
}

fn main() {
    // As the binary runs: candle's element-wise ops on the calling thread, freed blocks kept.
    taidcache::single_threaded_candle_ops();
    taidcache::keep_freed_memory();
    let a = args();
    std::fs::create_dir_all(&a.work).unwrap();
    let source_type = GgufModel::open(&a.gguf).unwrap().tensor_types();

    // The tokens: the texts, encoded by the file's own tokenizer, cut into rows.
    let tokenizer = GgufModel::open(&a.gguf).unwrap().tokenizer().unwrap();
    let mut ids: Vec<u32> = Vec::new();
    for t in &a.text {
        let text = std::fs::read_to_string(t).unwrap();
        ids.extend(tokenizer.encode(text.as_str(), false).unwrap().get_ids());
    }
    let rows = (a.tokens / a.seq_len).max(1);
    assert!(
        ids.len() >= rows * a.seq_len,
        "the texts hold {} tokens, fewer than {}",
        ids.len(),
        rows * a.seq_len
    );
    ids.truncate(rows * a.seq_len);
    let ids = Tensor::from_vec(ids, (rows, a.seq_len), &Device::Cpu).unwrap();

    let reference = a.work.join("reference-f32.gguf");
    gguf::requantize(&a.gguf, &reference, GgmlDType::F32).unwrap();
    let (p, ref_tps) = logprobs(&reference, &ids, false);

    println!(
        "source {} ({source_type:?}); {} positions",
        a.gguf.display(),
        p.len()
    );
    println!("| type | file MiB | matrices in the type / fallback | mean KL(ref ‖ q) | p99 KL | top-1 agreement | forward tokens/s | vs f32 |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| F32 (reference) | {:.0} | | | | | {ref_tps:.0} | 1.00 |",
        std::fs::metadata(&reference).unwrap().len() as f64 / (1 << 20) as f64
    );
    let mut out = Vec::new();
    for ty in [
        GgmlDType::BF16,
        GgmlDType::F16,
        GgmlDType::Q8_0,
        GgmlDType::Q6K,
        GgmlDType::Q5_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5K,
        GgmlDType::Q4_1,
        GgmlDType::Q4_0,
        GgmlDType::Q4K,
        GgmlDType::Q3K,
        GgmlDType::Q2K,
    ] {
        if !a.types.is_empty() && !a.types.iter().any(|t| t == &format!("{ty:?}")) {
            continue;
        }
        // BF16: the f32 reference with bf16 products (`precompute --dtype bf16` on the CPU).
        let (path, exact, fell) = if ty == GgmlDType::BF16 {
            (reference.clone(), 0, 0)
        } else {
            let path = a.work.join(format!("{ty:?}.gguf"));
            let (exact, fell) = gguf::requantize(&a.gguf, &path, ty).unwrap();
            (path, exact, fell)
        };
        let (q, tps) = logprobs(&path, &ids, ty == GgmlDType::BF16);
        let mut kls: Vec<f64> = p
            .iter()
            .zip(&q)
            .map(|(lp, lq)| {
                lp.iter()
                    .zip(lq)
                    .map(|(&a, &b)| (a as f64).exp() * (a as f64 - b as f64))
                    .sum::<f64>()
            })
            .collect();
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
        let agree = p
            .iter()
            .zip(&q)
            .filter(|(lp, lq)| argmax(lp) == argmax(lq))
            .count() as f64
            / p.len() as f64;
        let mean = kls.iter().sum::<f64>() / kls.len() as f64;
        kls.sort_by(f64::total_cmp);
        let p99 = kls[(kls.len() * 99 / 100).min(kls.len() - 1)];
        let mib = std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;
        let name = if ty == GgmlDType::BF16 {
            "F32 file, bf16 CPU products".to_string()
        } else {
            format!("{ty:?}")
        };
        println!(
            "| {name} | {mib:.0} | {exact} / {fell} | {mean:.5} | {p99:.5} | {:.1}% | {tps:.0} | {:.2} |",
            100.0 * agree,
            tps / ref_tps
        );
        out.push(serde_json::json!({
            "type": format!("{ty:?}"), "file_mib": mib, "matrices": exact, "fallback": fell,
            "mean_kl": mean, "p99_kl": p99, "top1": agree, "tokens_per_s": tps,
            "vs_f32": tps / ref_tps,
        }));
        if ty != GgmlDType::BF16 {
            std::fs::remove_file(&path).unwrap();
        }
    }
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(
        &a.out,
        serde_json::to_string_pretty(&serde_json::json!({
            "source": a.gguf.display().to_string(),
            "positions": p.len(),
            "reference_tokens_per_s": ref_tps,
            "rows": out,
        }))
        .unwrap(),
    )
    .unwrap();
}
