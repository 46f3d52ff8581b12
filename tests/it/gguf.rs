//! GGUF teachers: fixtures written by the `gguf` PyPI package (`tests/python/gguf_fixture.py`)
//! from the suite's tiny models, checked against the safetensors teacher and against the
//! dequantized weights (what transformers loads from a GGUF file: `gguf.quants.dequantize`).
//!
//! Needs `python3` with `numpy` and `gguf` (`make test` installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, D};
use taidcache::cache::ShardBatch;
use taidcache::corpus::load_tokenizer;
use taidcache::model::gguf::GgufModel;
use taidcache::model::{Architecture, Mode, ModelDir};
use taidcache::testing::TinySpec;

use crate::common::{assert_same_rows, corpus_texts, read_rows, taidcache, Fixture, ALL_ARCHS};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/gguf_fixture.py")
}

fn python(args: &[&str]) -> Output {
    let out = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script().display()));
    assert!(
        out.status.success(),
        "gguf_fixture.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Write `hf` as a GGUF file of type `ty` (plus extra flags of `gguf_fixture.py write`).
pub fn write_gguf(hf: &Path, out: &Path, ty: &str, extra: &[&str]) {
    let mut args = vec![
        "write",
        hf.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        ty,
    ];
    args.extend_from_slice(extra);
    python(&args);
}

/// The dequantized Hugging Face directory of a GGUF file (config and tokenizer from `hf`).
fn dequantize(gguf: &Path, out: &Path, hf: &Path) {
    python(&[
        "dequantize",
        gguf.to_str().unwrap(),
        out.to_str().unwrap(),
        "--config-from",
        hf.to_str().unwrap(),
    ]);
}

fn precompute(teacher: &Path, corpus: &Path, out: &Path, k: usize, extra: &[&str]) -> Output {
    let k = k.to_string();
    let mut args = vec![
        "precompute",
        "--teacher",
        teacher.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--top-k",
        &k,
        "--seq-len",
        "32",
        "--batch-size",
        "2",
    ];
    args.extend_from_slice(extra);
    taidcache(&args)
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "taidcache failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Log-softmax of a model's logits at every position of `rows`: `[rows · seq_len][vocab]`.
fn logprobs(model: &taidcache::model::Decoder, rows: &[ShardBatch]) -> Vec<Vec<f32>> {
    let s = rows[0].seq_len;
    let ids: Vec<u32> = rows.iter().flat_map(|r| r.input_ids.clone()).collect();
    let ids = Tensor::from_vec(ids, (rows.len(), s), &Device::Cpu).unwrap();
    let logits = model.forward(&ids, Mode::Infer).unwrap();
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let v = lp.dim(D::Minus1).unwrap();
    lp.reshape((rows.len() * s, v))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn dense_gguf_teachers_cache_what_the_safetensors_teacher_caches() {
    for arch in ALL_ARCHS {
        let fx = Fixture::new(arch, 12);
        let reference = ModelDir::open(&fx.teacher)
            .unwrap()
            .load(DType::F32, &Device::Cpu)
            .unwrap();
        let st_cache = fx.path("st");
        ok(precompute(&fx.teacher, &fx.corpus, &st_cache, 8, &[]));
        let st_rows = read_rows(&st_cache);
        let want = logprobs(&reference, &st_rows);
        for ty in ["f32", "f16"] {
            let file = fx.path(&format!("teacher-{ty}.gguf"));
            write_gguf(&fx.teacher, &file, ty, &[]);
            let cache = fx.path(&format!("gguf-{ty}"));
            ok(precompute(&file, &fx.corpus, &cache, 8, &[]));
            let rows = read_rows(&cache);
            let model = GgufModel::open(&file).unwrap();
            assert_eq!(model.config.architecture, arch, "{ty}");
            let got = logprobs(&model.load(DType::F32, &Device::Cpu).unwrap(), &rows);
            if ty == "f32" {
                // The same weights: the same ids, and log-probs within 1e-4.
                let d = max_abs_diff(&want, &got);
                assert!(d <= 1e-4, "{arch:?} {ty}: log-probs differ by {d}");
                for (a, b) in st_rows.iter().zip(&rows) {
                    assert_eq!(a.input_ids, b.input_ids, "{arch:?} {ty}");
                    assert_eq!(a.topk_ids, b.topk_ids, "{arch:?} {ty}");
                }
            } else {
                // F16 weights: the reference is the same file dequantized.
                let deq = fx.path("deq-f16");
                dequantize(&file, &deq, &fx.teacher);
                let r = ModelDir::open(&deq)
                    .unwrap()
                    .load(DType::F32, &Device::Cpu)
                    .unwrap();
                let d = max_abs_diff(&logprobs(&r, &rows), &got);
                assert!(d <= 1e-4, "{arch:?} {ty}: log-probs differ by {d}");
                ok(precompute(&deq, &fx.corpus, &fx.path("deq-cache"), 8, &[]));
                for (a, b) in read_rows(&fx.path("deq-cache")).iter().zip(&rows) {
                    assert_eq!(a.topk_ids, b.topk_ids, "{arch:?} {ty}");
                }
            }
        }
    }
}

/// Agreement of a quantized teacher's cache (k = vocab) with the GGUF file's weights
/// dequantized, over every loss position.
struct Agreement {
    /// Top-1 agreement over all positions.
    top1: f64,
    /// Top-1 agreement where the reference's best id leads the second by at least
    /// [`DECIDED`] nats (random tiny models have many near ties, which the 8-bit quantized
    /// activations of candle's kernels, and the f16 log-probs of the cache, may flip).
    top1_decided: f64,
    /// Share of positions that are decided.
    decided: f64,
    /// Mean KL(dequantized ‖ cache).
    kl: f64,
}

const DECIDED: f32 = 0.02;

fn quantized_agreement(fx: &Fixture, file: &Path, name: &str) -> Agreement {
    let vocab = GgufModel::open(file).unwrap().config.vocab_size;
    let cache = fx.path(&format!("cache-{name}"));
    ok(precompute(file, &fx.corpus, &cache, vocab, &[]));
    let deq = fx.path(&format!("deq-{name}"));
    dequantize(file, &deq, &fx.teacher);
    let reference = ModelDir::open(&deq)
        .unwrap()
        .load(DType::F32, &Device::Cpu)
        .unwrap();
    let rows = read_rows(&cache);
    let p = logprobs(&reference, &rows);
    let (mut agree, mut kl, mut n) = (0usize, 0f64, 0usize);
    let (mut agree_decided, mut decided) = (0usize, 0usize);
    let mut pos = 0;
    for r in &rows {
        for t in 0..r.seq_len {
            let lp = &p[pos];
            pos += 1;
            if !r.loss_mask[t] {
                continue;
            }
            let ids = &r.topk_ids[t * vocab..(t + 1) * vocab];
            let q = &r.topk_logprobs[t * vocab..(t + 1) * vocab];
            let top = (0..lp.len())
                .max_by(|&a, &b| lp[a].total_cmp(&lp[b]))
                .unwrap();
            let second = (0..lp.len())
                .filter(|&i| i != top)
                .map(|i| lp[i])
                .fold(f32::NEG_INFINITY, f32::max);
            let hit = usize::from(ids[0] as usize == top);
            agree += hit;
            if lp[top] - second >= DECIDED {
                decided += 1;
                agree_decided += hit;
            }
            kl += ids
                .iter()
                .zip(q)
                .map(|(&id, &lq)| {
                    let lp = lp[id as usize] as f64;
                    lp.exp() * (lp - lq.to_f64())
                })
                .sum::<f64>();
            n += 1;
        }
    }
    assert!(n > 100, "{name}: only {n} positions");
    Agreement {
        top1: agree as f64 / n as f64,
        top1_decided: agree_decided as f64 / decided.max(1) as f64,
        decided: decided as f64 / n as f64,
        kl: kl / n as f64,
    }
}

fn check_agreement(what: &str, a: &Agreement) {
    eprintln!(
        "{what}: top-1 agreement {:.4} ({:.4} where the reference leads by >= {DECIDED} nats, \
         {:.1}% of positions), mean KL {:.3e}",
        a.top1,
        a.top1_decided,
        100.0 * a.decided,
        a.kl
    );
    assert!(a.decided >= 0.8, "{what}: only {:.3} decided", a.decided);
    assert!(
        a.top1_decided >= 0.99,
        "{what}: top-1 agreement {}",
        a.top1_decided
    );
    assert!(a.top1 >= 0.95, "{what}: top-1 agreement {}", a.top1);
    assert!(a.kl <= 1e-3, "{what}: mean KL {}", a.kl);
}

#[test]
fn quantized_gguf_teachers_agree_with_their_dequantized_weights() {
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let fx = Fixture::new(arch, 12);
        for ty in ["q8_0", "q4_0", "q5_1"] {
            let file = fx.path(&format!("teacher-{ty}.gguf"));
            write_gguf(&fx.teacher, &file, ty, &[]);
            let a = quantized_agreement(&fx, &file, ty);
            check_agreement(&format!("{arch:?} {ty}"), &a);
        }
    }
}

#[test]
fn a_k_quant_teacher_agrees_with_its_dequantized_weights() {
    // K-quant blocks hold 256 values: rows of 256 and 512.
    let spec = TinySpec {
        hidden_size: 256,
        intermediate_size: 512,
        ..TinySpec::new(Architecture::Llama, 320)
    };
    let fx = Fixture::with_spec(spec, 10);
    let f32_file = fx.path("teacher-f32.gguf");
    write_gguf(&fx.teacher, &f32_file, "f32", &[]);
    let file = fx.path("teacher-q4k.gguf");
    let (exact, fell) =
        taidcache::model::gguf::requantize(&f32_file, &file, GgmlDType::Q4K).unwrap();
    assert_eq!((exact, fell), (16, 0));
    let types = GgufModel::open(&file).unwrap().tensor_types();
    assert!(types.get("Q4K").is_some_and(|&n| n >= 14), "{types:?}");
    let a = quantized_agreement(&fx, &file, "q4k");
    check_agreement("Llama Q4_K", &a);
}

#[test]
fn a_split_gguf_caches_what_the_single_file_caches_and_a_requantized_teacher_is_another_teacher() {
    let fx = Fixture::new(Architecture::Llama, 8);
    let single = fx.path("t.gguf");
    write_gguf(&fx.teacher, &single, "q8_0", &[]);
    let split = fx.path("s.gguf");
    write_gguf(&fx.teacher, &split, "q8_0", &["--split", "3"]);
    let first = fx.path("s-00001-of-00003.gguf");
    assert!(first.exists());
    ok(precompute(&single, &fx.corpus, &fx.path("a"), 8, &[]));
    ok(precompute(&first, &fx.corpus, &fx.path("b"), 8, &[]));
    assert_same_rows(&read_rows(&fx.path("a")), &read_rows(&fx.path("b")));

    // Part 2 given instead of part 1: one sentence naming the first part.
    let out = precompute(
        &fx.path("s-00002-of-00003.gguf"),
        &fx.corpus,
        &fx.path("c"),
        8,
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s-00001-of-00003.gguf"), "{err}");

    // Another quantization of the same model cannot resume into this cache.
    let q4 = fx.path("t4.gguf");
    write_gguf(&fx.teacher, &q4, "q4_0", &[]);
    let out = precompute(&q4, &fx.corpus, &fx.path("a"), 8, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("teacher"), "{err}");
    let m = |d: &str| {
        taidcache::cache::manifest::Manifest::load(&fx.path(d).join("manifest.json")).unwrap()
    };
    ok(precompute(&q4, &fx.corpus, &fx.path("d"), 8, &[]));
    assert_ne!(m("a").teacher.weights_xxh3, m("d").teacher.weights_xxh3);
    assert_ne!(m("a").teacher.config_sha256, m("d").teacher.config_sha256);
}

/// Texts that exercise the pre-tokenizers: digits, punctuation, contractions, newlines, spaces,
/// accents.
fn tokenizer_texts() -> Vec<String> {
    let mut texts = corpus_texts(40, 5);
    texts.extend(
        [
            "In 2024 the teacher's 12345 tokens   were cached.\n\nIt's done!",
            "Café naïve — déjà vu; l'été 1999? ok:   yes\t\ttabs\r\nCRLF",
            "<|endoftext|>the student<|endoftext|> learns 3.14159 from 42 shards",
            "  leading spaces and trailing   ",
        ]
        .map(String::from),
    );
    texts
}

#[test]
fn the_tokenizer_rebuilt_from_gguf_metadata_encodes_like_tokenizer_json() {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

    let fx = Fixture::new(Architecture::Llama, 12);
    let split = |re: &str| -> PreTokenizerWrapper {
        Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .unwrap()
        .into()
    };
    // The pre-tokenizers of GPT-2, SmolLM, Qwen2 and Llama 3 as their tokenizer.json files
    // write them, each with its llama.cpp `tokenizer.ggml.pre` name.
    let qwen2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let variants: Vec<(&str, PreTokenizerWrapper)> = vec![
        ("gpt-2", ByteLevel::new(false, true, true).into()),
        (
            "smollm",
            Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
        ),
        (
            "qwen2",
            Sequence::new(vec![
                split(qwen2),
                ByteLevel::new(false, false, false).into(),
            ])
            .into(),
        ),
        (
            "llama-bpe",
            Sequence::new(vec![
                split(llama3),
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
        ),
    ];
    let base = load_tokenizer(&fx.teacher.join("tokenizer.json")).unwrap();
    let texts = tokenizer_texts();
    for (pre, pt) in variants {
        let mut tok = base.clone();
        tok.with_pre_tokenizer(Some(pt));
        if pre == "qwen2" {
            tok.with_normalizer(Some(tokenizers::normalizers::unicode::NFC))
                .unwrap();
        }
        let hf = fx.path(&format!("hf-{pre}"));
        std::fs::create_dir_all(&hf).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fx.teacher.join(f), hf.join(f)).unwrap();
        }
        tok.save(hf.join("tokenizer.json"), false).unwrap();
        let file = fx.path(&format!("{pre}.gguf"));
        write_gguf(&hf, &file, "f32", &["--pre", pre]);
        let rebuilt = GgufModel::open(&file).unwrap().tokenizer().unwrap();
        let mut tokens = 0;
        for t in &texts {
            let want = tok.encode(t.as_str(), false).unwrap();
            let got = rebuilt.encode(t.as_str(), false).unwrap();
            assert_eq!(got.get_ids(), want.get_ids(), "pre {pre}, text {t:?}");
            tokens += want.len();
        }
        assert!(tokens > 500, "{pre}: {tokens} tokens");
    }
}

fn fails_with(out: Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one sentence expected:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    crate::common::expect(&err, needles);
}

#[test]
fn bad_gguf_teachers_fail_with_one_sentence_naming_the_problem() {
    let fx = Fixture::new(Architecture::Llama, 6);
    let good = fx.path("good.gguf");
    write_gguf(&fx.teacher, &good, "q8_0", &[]);
    let run = |teacher: &Path, extra: &[&str]| {
        let out = fx.path("out");
        let _ = std::fs::remove_dir_all(&out);
        precompute(teacher, &fx.corpus, &out, 8, extra)
    };

    // Truncated: a download cut off in the tensor data.
    let bytes = std::fs::read(&good).unwrap();
    let cut = fx.path("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    fails_with(run(&cut, &[]), &["cut.gguf", "truncated"]);
    // Cut inside the header.
    std::fs::write(&cut, &bytes[..200]).unwrap();
    fails_with(run(&cut, &[]), &["cut.gguf", "GGUF"]);

    let unknown = fx.path("unknown.gguf");
    write_gguf(&fx.teacher, &unknown, "f32", &["--arch", "gpt9"]);
    fails_with(run(&unknown, &[]), &["general.architecture", "gpt9"]);

    let iq = fx.path("iq.gguf");
    write_gguf(
        &fx.teacher,
        &iq,
        "f32",
        &["--raw-type", "blk.0.ffn_down.weight=IQ4_NL"],
    );
    fails_with(run(&iq, &[]), &["iq.gguf", "IQ4_NL"]);

    let missing = fx.path("missing.gguf");
    write_gguf(
        &fx.teacher,
        &missing,
        "f32",
        &["--drop-key", "llama.attention.layer_norm_rms_epsilon"],
    );
    fails_with(
        run(&missing, &[]),
        &["llama.attention.layer_norm_rms_epsilon", "missing"],
    );

    // A tokenizer.json of another vocabulary.
    let other = Fixture::with_spec(
        TinySpec {
            seed: 9,
            ..TinySpec::new(Architecture::Llama, 320)
        },
        40,
    );
    let texts: Vec<String> = corpus_texts(30, 99)
        .into_iter()
        .map(|t| t.replace(' ', "_"))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tok = taidcache::corpus::testing::train_test_tokenizer(&refs, 300);
    let tok_path = other.path("other-tokenizer.json");
    tok.save(&tok_path, false).unwrap();
    fails_with(
        run(&good, &["--tokenizer", tok_path.to_str().unwrap()]),
        &["other-tokenizer.json", "different vocabularies"],
    );

    // No tokenizer in the file: the message says to give one, and giving it works.
    let bare = fx.path("bare.gguf");
    write_gguf(&fx.teacher, &bare, "q8_0", &["--no-tokenizer"]);
    fails_with(run(&bare, &[]), &["tokenizer.ggml.model", "--tokenizer"]);
    let tj = fx.teacher.join("tokenizer.json");
    ok(run(&bare, &["--tokenizer", tj.to_str().unwrap()]));
}
