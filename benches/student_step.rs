//! The student's training forward and backward on the CPU, without the output projection and
//! loss (those are `distill::cpu_head`'s): the end-to-end bench's student (Llama, 4 layers,
//! hidden 256, 4 heads / 2 KV heads, intermediate 768, vocabulary 49,152) on 4 × 256 tokens,
//! `Mode::Train` (the fused CPU ops of `model::cpu_ops`, each with its one-pass backward)
//! against `Mode::TrainReference` (candle's differentiable ops), paired in the same run.
//!
//!     cargo bench --bench student_step
//!
//! With `STUDENT_STEP_PROFILE` set it runs the fused side alone (for `perf record`).

use candle_core::{Device, Tensor};
use taidcache::model::init::TinySpec;
use taidcache::model::train::Student;
use taidcache::model::{Architecture, Mode};
use taidcache::testing::Normal;

#[path = "common/paired.rs"]
mod paired;
#[path = "common/results.rs"]
mod results;

const ROUNDS: usize = 9;
const BATCH: usize = 4;
const SEQ_LEN: usize = 256;

fn main() {
    if !paired::requested() {
        return;
    }
    // As `taidcache` itself runs.
    taidcache::single_threaded_candle_ops();
    taidcache::keep_freed_memory();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut spec = TinySpec::new(Architecture::Llama, 49_152);
    (spec.hidden_size, spec.intermediate_size, spec.layers) = (256, 768, 4);
    (spec.heads, spec.kv_heads, spec.tie_word_embeddings) = (4, 2, false);
    spec.write_config(dir.path()).expect("the student's config");
    let student = Student::from_dir(dir.path(), 0, &Device::Cpu).expect("the student");
    let mut rng = Normal::new(1);
    let ids: Vec<u32> = (0..BATCH * SEQ_LEN)
        .map(|_| (rng.sample().abs() * 9_000.0) as u32 % 49_152)
        .collect();
    let ids = Tensor::from_vec(ids, (BATCH, SEQ_LEN), &Device::Cpu).unwrap();
    let probe: Vec<f32> = (0..BATCH * SEQ_LEN * 256)
        .map(|_| 1e-3 * rng.sample())
        .collect();
    let probe = Tensor::from_vec(probe, (BATCH, SEQ_LEN, 256), &Device::Cpu).unwrap();
    let step = |mode: Mode| {
        let f = student.model.forward_train_in(&ids, false, mode).unwrap();
        let loss = (&f.hidden * &probe).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let grads = student.model.backward_through_layers(f, grads).unwrap();
        std::hint::black_box(grads);
    };
    if std::env::var_os("STUDENT_STEP_PROFILE").is_some() {
        // The fused side alone, for `perf record`.
        for _ in 0..ROUNDS {
            step(Mode::Train);
        }
        return;
    }
    step(Mode::Train);
    step(Mode::TrainReference);
    let (fused, reference) =
        paired::alternate(ROUNDS, || step(Mode::Train), || step(Mode::TrainReference));
    paired::record("student_step", ["fused", "candle"], "s", &fused, &reference);
}
