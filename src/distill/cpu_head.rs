//! The output projection of a CPU student, forward and backward, as three matrix products into
//! buffers that live as long as the thread.
//!
//! On the CPU the logits, the loss gradient and the projection's gradients are host memory
//! already, so [`micro_batch`] runs them as `gemm` calls on the tensors' own buffers instead of
//! candle ops. Per chunk `c` of positions, with `H_c` `[n, hidden]`, `W` `[vocab, hidden]` and
//! `s` the loss's `1 / normalizer`:
//!
//! - `logits_c = H_c · Wᵀ` into a kept `[n, vocab]` buffer;
//! - `G_c = ∂loss/∂logits_c` from [`objectives::loss_and_grad`] into a second kept buffer;
//! - `∂loss/∂H_c = s · G_c · W` into its rows of a `[positions, hidden]` buffer;
//! - `∂loss/∂W += s · G_cᵀ · H_c`, accumulated in place by `gemm` (no per-chunk tensor, no add).
//!
//! Nothing of `[n, vocab]` is allocated per step, so the step takes no page faults for it (glibc
//! returns blocks above its 32 MiB mmap threshold to the kernel on free, and a fresh one faults
//! in page by page), and the scale `s` rides on the products instead of a pass over `G_c`. The
//! candle path ([`super::trainer`]'s) remains for other devices; both give the same gradients
//! (tested below).

use std::cell::RefCell;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};

use super::objectives::{self, LossConfig, LossOutput};
use super::trainer::{chunk_rows, finish_backward, train_forward, Records};
use crate::cache::ShardBatch;
use crate::error::{CandleContext, Error, Result};
use crate::model::bf16_products::{Kernel, PackedBf16, SplitBf16, Store};
use crate::model::train::Student;

thread_local! {
    /// `[n, vocab]` logits and their gradient, grown to the largest chunk seen.
    static BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// The bf16 operands of `--precision bf16`, kept for the same reason.
    static BF16: RefCell<Option<Bf16Operands>> = const { RefCell::new(None) };
}

/// The operands of the three products in bf16 ([`bf16_products`]): `W` packed twice (once per
/// micro-batch, as the right operand of `H_c · Wᵀ` and of `G_c · W`), `G_c` packed as the right
/// operand of `H_cᵀ · G_c`, a split left operand (`H_c`, `G_c` or `H_cᵀ`), and `∂loss/∂Wᵀ`.
struct Bf16Operands {
    w: PackedBf16,
    w_t: PackedBf16,
    g: PackedBf16,
    left: SplitBf16,
    /// `∂loss/∂Wᵀ` `[width, vocab]`, accumulated over the chunks.
    grad_w_t: Vec<f32>,
}

/// [`super::trainer::micro_batch`] for a student on the CPU: the same loss sums, and the same
/// gradients added into `acc`.
pub fn micro_batch(
    student: &Student,
    data: &ShardBatch,
    cfg: &LossConfig,
    normalizer: usize,
    acc: &mut Option<GradStore>,
) -> Result<LossOutput> {
    let rows = chunk_rows(student.config.vocab_size);
    in_chunks(student, data, cfg, normalizer, acc, rows)
}

/// [`micro_batch`] with chunks of `rows` positions.
fn in_chunks(
    student: &Student,
    data: &ShardBatch,
    cfg: &LossConfig,
    normalizer: usize,
    acc: &mut Option<GradStore>,
    rows: usize,
) -> Result<LossOutput> {
    let (b, s) = (data.rows(), data.seq_len);
    let vocab = student.config.vocab_size;
    let ids = Tensor::from_slice(&data.input_ids, (b, s), &Device::Cpu).ctx("student input")?;
    let (forward, hidden) = train_forward(student, &ids)?;
    let hd = hidden.detach().contiguous().ctx("lm_head")?;
    let w = student
        .lm_head_var()
        .as_tensor()
        .detach()
        .contiguous()
        .ctx("lm_head")?;
    let width = w.dim(1).ctx("lm_head")?;
    let positions = b * s;
    let scale = 1.0 / normalizer.max(1) as f32;
    let records = Records::new(data);
    let rows = rows.clamp(1, positions.max(1));
    let mut grad_h = vec![0f32; positions * width];
    let mut grad_w = vec![0f32; vocab * width];
    let mut out = LossOutput::default();
    if student.bf16_output_products {
        with_slice(&hd, |h| {
            with_slice(&w, |w| {
                let shape = Shape {
                    positions,
                    rows,
                    vocab,
                    width,
                    scale,
                };
                out = bf16_products(h, w, shape, &mut grad_h, &mut grad_w, |l, start, n, g| {
                    objectives::loss_and_grad(cfg, &records.chunk(l, vocab, start, n), g)
                });
            })
        })??;
    } else {
        with_slice(&hd, |h| {
            with_slice(&w, |w| {
                each_chunk(positions, rows, vocab, |start, n, l, g| {
                    let hc = &h[start * width..(start + n) * width];
                    // logits_c [n, vocab] = H_c [n, width] · Wᵀ [width, vocab]
                    product(
                        n,
                        vocab,
                        width,
                        l,
                        false,
                        hc,
                        (1, width),
                        w,
                        (width, 1),
                        1.0,
                    );
                    // The host step path reads every logit on the host (what the traffic
                    // counters of `device::traffic` compare the device path with).
                    super::device::traffic::count_to_host(l.len() * 4);
                    out += objectives::loss_and_grad(cfg, &records.chunk(l, vocab, start, n), g);
                    // ∂loss/∂H_c [n, width] = s · G_c [n, vocab] · W [vocab, width]
                    let gh = &mut grad_h[start * width..(start + n) * width];
                    product(
                        n,
                        width,
                        vocab,
                        gh,
                        false,
                        g,
                        (1, vocab),
                        w,
                        (1, width),
                        scale,
                    );
                    // ∂loss/∂W [vocab, width] += s · G_cᵀ [vocab, n] · H_c [n, width]
                    let first = start == 0;
                    product(
                        vocab,
                        width,
                        n,
                        &mut grad_w,
                        !first,
                        g,
                        (vocab, 1),
                        hc,
                        (1, width),
                        scale,
                    );
                })
            })
        })??;
    }
    finish(
        student,
        forward,
        &hidden,
        grad_h,
        grad_w,
        (positions, width, vocab),
        acc,
    )?;
    Ok(out)
}

/// The rest of the backward from the projection's gradients `∂loss/∂H` and `∂loss/∂W`.
fn finish(
    student: &Student,
    forward: crate::model::decoder::TrainForward,
    hidden: &Tensor,
    grad_h: Vec<f32>,
    grad_w: Vec<f32>,
    (positions, width, vocab): (usize, usize, usize),
    acc: &mut Option<GradStore>,
) -> Result<()> {
    let grad_h =
        Tensor::from_vec(grad_h, (positions, width), &Device::Cpu).ctx("lm_head backward")?;
    let grad_w = Tensor::from_vec(grad_w, (vocab, width), &Device::Cpu).ctx("lm_head backward")?;
    finish_backward(student, forward, hidden, vec![grad_h], Some(grad_w), acc)
}

/// The sizes of [`bf16_products`]: `positions` rows of `H` in chunks of `rows`, `W`
/// `[vocab, width]`, `scale` the loss's `1 / normalizer`.
#[derive(Clone, Copy)]
struct Shape {
    positions: usize,
    rows: usize,
    vocab: usize,
    width: usize,
    scale: f32,
}

/// The three products of [`in_chunks`] in bf16 ([`crate::model::bf16_products`]), with `loss`
/// filling a chunk's `G_c` from its logits (arguments: logits, first position, positions, `G_c`)
/// as in the f32 path. Per chunk:
///
/// - `logits_c = H_c · Wᵀ`: `H_c` split in two bf16 parts, `W` rounded;
/// - `∂loss/∂H_c = (s·G_c) · W`: `s·G_c` and `W` rounded;
/// - `∂loss/∂Wᵀ += (s·H_c)ᵀ · G_c`: `s·H_cᵀ` and `G_c` rounded (its rows pack without a
///   transpose), accumulated in place by the tile kernel in a `[width, vocab]` buffer that is
///   transposed into `∂loss/∂W` once per micro-batch.
///
/// So the logits, which the loss and `G_c` are computed from, have one operand exact to 2⁻¹⁷
/// and the other rounded to bf16 (2⁻⁹); the two gradient products round both operands (as a
/// bf16 autocast step does all three), for half the work of two parts. All sums are f32; the
/// scale `s` rides on the left operands.
fn bf16_products(
    h: &[f32],
    w: &[f32],
    shape: Shape,
    grad_h: &mut [f32],
    grad_w: &mut [f32],
    mut loss: impl FnMut(&[f32], usize, usize, &mut [f32]) -> LossOutput,
) -> LossOutput {
    let Shape {
        positions,
        rows,
        vocab,
        width,
        scale,
    } = shape;
    let kernel = Kernel::best();
    let mut out = LossOutput::default();
    BF16.with_borrow_mut(|ops| {
        let ops = ops.get_or_insert_with(|| Bf16Operands {
            w: PackedBf16::empty(),
            w_t: PackedBf16::empty(),
            g: PackedBf16::empty(),
            left: SplitBf16::default(),
            grad_w_t: Vec::new(),
        });
        ops.grad_w_t.resize(width * vocab, 0.0);
        ops.w.repack(w, vocab, width, (width, 1));
        ops.w_t.repack(w, width, vocab, (1, width));
        each_chunk(positions, rows, vocab, |start, n, l, g| {
            let hc = &h[start * width..(start + n) * width];
            ops.left.fill(hc, n, width, (width, 1));
            ops.w.product_into(&ops.left, l, Store::PLAIN, kernel);
            super::device::traffic::count_to_host(l.len() * 4);
            out += loss(l, start, n, g);
            ops.left.fill_rounded(g, n, vocab, (vocab, 1), scale);
            let gh = &mut grad_h[start * width..(start + n) * width];
            ops.w_t.product_into(&ops.left, gh, Store::PLAIN, kernel);
            // ∂Wᵀ [width, vocab] += (s·H_c)ᵀ [width, n] · G_c [n, vocab]
            ops.g.repack(g, vocab, n, (1, vocab));
            ops.left.fill_rounded(hc, width, n, (1, width), scale);
            let accumulate = Store {
                accumulate: start > 0,
            };
            ops.g
                .product_into(&ops.left, &mut ops.grad_w_t, accumulate, kernel);
        });
        if positions > 0 {
            transpose(&ops.grad_w_t, width, vocab, grad_w);
        }
    });
    out
}

/// `dst [m, n] (+)= beta · lhs [m, k] · rhs [k, n]`, every matrix given by its buffer and its
/// (column, row) strides in elements; `dst` is row-major and is read only when `accumulate`.
#[allow(clippy::too_many_arguments)]
fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    beta: f32,
) {
    let last = |(cs, rs): (usize, usize), rows: usize, cols: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    assert!(dst.len() >= m * n, "gemm destination too small");
    assert!(
        m == 0 || k == 0 || last(lhs_strides, m, k) < lhs.len(),
        "gemm lhs too small"
    );
    assert!(
        k == 0 || n == 0 || last(rhs_strides, k, n) < rhs.len(),
        "gemm rhs too small"
    );
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assertions above keep every element gemm reads or writes inside its slice
    // (the largest offset of each operand is below its length), and `dst` does not alias the
    // operands (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_strides.0 as isize,
            lhs_strides.1 as isize,
            rhs.as_ptr(),
            rhs_strides.0 as isize,
            rhs_strides.1 as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `f(start, n, logits, grad)` for each chunk of `rows` positions (the last one shorter), with
/// the thread's kept `[n, vocab]` buffers of the chunk's logits and their gradient.
fn each_chunk(
    positions: usize,
    rows: usize,
    vocab: usize,
    mut f: impl FnMut(usize, usize, &mut [f32], &mut [f32]),
) {
    BUFFERS.with_borrow_mut(|(logits, grad)| {
        logits.resize(rows * vocab, 0.0);
        grad.resize(rows * vocab, 0.0);
        let mut start = 0;
        while start < positions {
            let n = rows.min(positions - start);
            f(start, n, &mut logits[..n * vocab], &mut grad[..n * vocab]);
            start += n;
        }
    })
}

/// `dst [cols, rows] = srcᵀ` for `src` row-major `[rows, cols]`, in 32 × 32 blocks (each read
/// and written in whole cache lines) over the rayon pool.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const B: usize = 32;
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    use rayon::prelude::*;
    dst[..rows * cols]
        .par_chunks_mut(B * rows)
        .enumerate()
        .for_each(|(cb, out)| {
            // Output rows [B·cb, B·cb + B): source columns of that block.
            let c0 = cb * B;
            let cn = B.min(cols - c0);
            for r0 in (0..rows).step_by(B) {
                let rn = B.min(rows - r0);
                for c in 0..cn {
                    for r in 0..rn {
                        out[c * rows + r0 + r] = src[(r0 + r) * cols + c0 + c];
                    }
                }
            }
        });
}

/// Run `f` on the f32 buffer of a contiguous f32 tensor on the CPU.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(Error::Internal(
            "the CPU output projection got a device tensor".into(),
        ));
    };
    let data = cpu.as_slice::<f32>().ctx("lm_head")?;
    let (lo, hi) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::Internal("lm_head operand is not contiguous".into()))?;
    Ok(f(&data[lo..hi]))
}

#[cfg(test)]
mod tests {
    use candle_core::backprop::GradStore;
    use candle_core::Device;

    use super::*;
    use crate::distill::objectives::Objective;
    use crate::distill::targets::TailMode;
    use crate::distill::trainer::{count_positions, micro_batch_candle};
    use crate::model::config::Architecture;
    use crate::model::init::TinySpec;

    fn grads(student: &Student, store: &GradStore) -> Vec<(String, Vec<f32>)> {
        student
            .params
            .iter()
            .map(|(n, v)| {
                let g = store
                    .get(v.as_tensor())
                    .expect("a gradient for every parameter");
                (n.clone(), g.flatten_all().unwrap().to_vec1().unwrap())
            })
            .collect()
    }

    /// The gemm path, in chunks of 5 positions (7 chunks, the last partial, so ∂loss/∂W is
    /// accumulated in place), against the candle ops of the host path: the same loss sums and
    /// every gradient within 1e-5 of its largest element, tied and untied, for three objectives.
    #[test]
    fn the_cpu_output_projection_equals_the_candle_path() {
        for tied in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut spec = TinySpec::new(Architecture::Llama, 256);
            spec.tie_word_embeddings = tied;
            spec.write_config(dir.path()).unwrap();
            let student = Student::from_dir(dir.path(), 7, &Device::Cpu).unwrap();
            let mut data = crate::testing::llm_like_batch(2, 16, 8, 256, 5);
            data.loss_mask[9] = false;
            for (objective, tail) in [
                (Objective::Kl, TailMode::Student),
                (Objective::Taid, TailMode::Uniform),
                (Objective::Ce, TailMode::Student),
            ] {
                let cfg = LossConfig {
                    objective,
                    tail,
                    t: 0.4,
                    lambda: 0.1,
                    ce_weight: 0.3,
                };
                let normalizer = count_positions(&data, objective);
                let (mut a, mut b) = (None, None);
                let x = in_chunks(&student, &data, &cfg, normalizer, &mut a, 5).unwrap();
                let y = micro_batch_candle(&student, &data, &cfg, normalizer, &mut b).unwrap();
                let what = format!("tied {tied}, {objective:?} {tail:?}");
                for (p, q) in [
                    (x.loss_sum, y.loss_sum),
                    (x.kl_sum, y.kl_sum),
                    (x.ce_sum, y.ce_sum),
                    (x.target_xent_sum, y.target_xent_sum),
                ] {
                    assert!(
                        (p - q).abs() <= 1e-6 * q.abs().max(1.0),
                        "{what}: {p} vs {q}"
                    );
                }
                assert_eq!((x.positions, x.ce_positions), (y.positions, y.ce_positions));
                let (ga, gb) = (grads(&student, &a.unwrap()), grads(&student, &b.unwrap()));
                for ((name, p), (_, q)) in ga.iter().zip(&gb) {
                    let scale = q.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let worst = p.iter().zip(q).fold(0f32, |m, (u, v)| m.max((u - v).abs()));
                    assert!(scale > 0.0, "{what}: {name} has a zero gradient");
                    assert!(
                        worst <= 1e-5 * scale,
                        "{what}: {name} differs by {worst} (max {scale})"
                    );
                }
            }
        }
    }

    /// `--precision bf16`: the same chunks with the three products in bf16 (on the kernel this
    /// CPU runs best) against the f32 path, for an untied and a tied student. The logits carry
    /// the weights' bf16 rounding (2⁻⁹ relative, a random sign per weight) and the gradient
    /// products round both operands, so the loss sums agree to 1e-4 (measured 5e-6) and every
    /// gradient to 5e-3 of its largest element (measured up to 3.6e-3 with `vdpbf16ps` and with
    /// the portable loop; 2.3e-3 when the gradient products kept two parts); they must differ
    /// (the products really ran in bf16).
    #[test]
    fn bf16_output_products_track_the_f32_path() {
        for tied in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut spec = TinySpec::new(Architecture::Llama, 256);
            spec.tie_word_embeddings = tied;
            spec.write_config(dir.path()).unwrap();
            let mut student = Student::from_dir(dir.path(), 7, &Device::Cpu).unwrap();
            let data = crate::testing::llm_like_batch(2, 16, 8, 256, 5);
            let cfg = LossConfig {
                objective: Objective::Taid,
                tail: TailMode::Student,
                t: 0.4,
                lambda: 0.1,
                ce_weight: 0.3,
            };
            let normalizer = count_positions(&data, cfg.objective);
            let mut f32_grads = None;
            let f = in_chunks(&student, &data, &cfg, normalizer, &mut f32_grads, 5).unwrap();
            student.bf16_output_products = true;
            let mut bf16_grads = None;
            let b = in_chunks(&student, &data, &cfg, normalizer, &mut bf16_grads, 5).unwrap();
            let what = format!("tied {tied}");
            let rel = (b.loss_sum - f.loss_sum).abs() / f.loss_sum.abs();
            assert!(rel <= 1e-4, "{what}: loss {} vs {}", b.loss_sum, f.loss_sum);
            assert_eq!(b.positions, f.positions);
            let (ga, gb) = (
                grads(&student, &f32_grads.unwrap()),
                grads(&student, &bf16_grads.unwrap()),
            );
            let mut differs = false;
            for ((name, p), (_, q)) in ga.iter().zip(&gb) {
                let scale = p.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = p.iter().zip(q).fold(0f32, |m, (u, v)| m.max((u - v).abs()));
                assert!(
                    worst <= 5e-3 * scale,
                    "{what}: {name} differs by {worst} (max {scale})"
                );
                differs |= worst > 0.0;
            }
            assert!(differs, "{what}: the bf16 gradients equal the f32 ones");
        }
    }
}
