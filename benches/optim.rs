//! One AdamW step over the parameters of a small transformer (about 5.2M f32 values in 11
//! tensors): the fused flat-buffer AdamW of `distill::optim` against candle-nn's AdamW, on the
//! same parameters and gradients in the same run.

use candle_core::{Device, Var};
use candle_nn::Optimizer;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use taidcache::distill::optim::{AdamW, AdamWConfig};
use taidcache::testing::Normal;

const SHAPES: &[&[usize]] = &[
    &[8000, 256],
    &[256, 256],
    &[256, 256],
    &[256, 256],
    &[256, 256],
    &[1024, 256],
    &[1024, 256],
    &[256, 1024],
    &[256],
    &[256],
    &[8000, 256],
];

fn vars(seed: u64) -> Vec<(String, Var)> {
    let mut rng = Normal::new(seed);
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| 0.02 * rng.sample()).collect();
            (
                format!("p{i}"),
                Var::from_vec(data, *shape, &Device::Cpu).unwrap(),
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let params = vars(0);
    let n: usize = SHAPES.iter().map(|s| s.iter().product::<usize>()).sum();
    // A loss whose gradient touches every parameter: Σ p².
    let loss = params
        .iter()
        .map(|(_, v)| v.as_tensor().sqr().unwrap().sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let grads = loss.backward().unwrap();
    let cfg = AdamWConfig::default();
    let mut group = c.benchmark_group("adamw_step");
    group.sample_size(20);
    group.throughput(Throughput::Elements(n as u64));
    let mut ours = AdamW::new(params.clone(), cfg).unwrap();
    group.bench_function("fused", |b| b.iter(|| ours.step(&grads, 1.0).unwrap()));
    let mut theirs = candle_nn::AdamW::new(
        params.iter().map(|(_, v)| v.clone()).collect(),
        candle_nn::ParamsAdamW {
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        },
    )
    .unwrap();
    group.bench_function("candle_nn", |b| b.iter(|| theirs.step(&grads).unwrap()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
