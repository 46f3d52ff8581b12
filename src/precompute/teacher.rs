//! The teacher's side of precompute: forward a batch, cut its logits into chunks, and take the
//! top-k of each chunk (on the device when it is a GPU, on the host's top-k pool otherwise).
//! The threads that drive it are in `pipeline`.

use std::path::Path;

use candle_core::{Device, Tensor};
use half::slice::HalfFloatSliceExt;

use super::{device_topk, tail_sample, topk};
use crate::cache::ShardBatch;
use crate::corpus::PackedSequence;
use crate::error::{CandleContext, Error, Result};
use crate::model::{Decoder, FloatType, Mode};

/// Logits are materialized in chunks of at most this many bytes (`[rows, vocab]` f32): below
/// the 32 MiB that `keep_freed_memory` (lib.rs) keeps in the heap, so a chunk reuses the
/// memory of the one before instead of faulting in fresh pages (the page faults at 128 and 24
/// MiB are in `docs/performance.md`).
pub const LOGITS_CHUNK_BYTES: usize = 24 << 20;
/// Logits chunks that may wait for the top-k thread, in bytes: enough to ride out a batch
/// whose top-k falls behind the forward for a while, bounded whatever the batch size.
pub const QUEUED_LOGITS_BYTES: usize = 256 << 20;

/// Rows per logits chunk of `teacher`.
fn chunk_rows(teacher: &Decoder) -> usize {
    (LOGITS_CHUNK_BYTES / 4 / teacher.config().vocab_size).max(1)
}

/// Capacity of the channel of logits chunks from the teacher to the top-k thread.
pub(super) fn queued_chunks(teacher: &Decoder) -> usize {
    let chunk_bytes = chunk_rows(teacher) * teacher.config().vocab_size * 4;
    (QUEUED_LOGITS_BYTES / chunk_bytes).max(1)
}

/// A batch's rows as the producer packed them (sequence ids, input ids, loss masks), with the
/// top-k buffers sized and still empty.
pub(super) fn batch_rows(seqs: &[PackedSequence], k: usize, draws: usize) -> ShardBatch {
    let s = seqs[0].input_ids.len();
    let mut rows = ShardBatch::new(s, k);
    for seq in seqs {
        rows.seq_ids.push(seq.seq_id);
        rows.input_ids.extend_from_slice(&seq.input_ids);
        rows.loss_mask.extend_from_slice(&seq.loss_mask);
    }
    let positions = seqs.len() * s;
    rows.topk_ids.resize(positions * k, 0);
    rows.topk_logprobs.resize(positions * k, half::f16::ZERO);
    rows.tail_logmass.resize(positions, 0.0);
    rows.draws = draws;
    rows.draw_ids.resize(positions * draws, 0);
    rows.draw_logprobs
        .resize(positions * draws, half::f16::ZERO);
    rows
}

/// Consecutive positions of a batch, from `start`.
pub enum Chunk {
    /// `[n, vocab]` f32 logits on the host: the top-k is still to be taken.
    Logits { start: usize, logits: Tensor },
    /// Selected on the device: `n · k` ids and log-probs, `n` tail log-masses.
    Selected {
        start: usize,
        ids: Vec<u32>,
        logprobs: Vec<f32>,
        tails: Vec<f32>,
    },
}

/// Run the teacher over `input` (`[batch, seq_len]` token ids) and pass its logits on in chunks
/// of at most [`LOGITS_CHUNK_BYTES`]; on a GPU the top-k is taken there first, unless
/// `host_topk` asks for the logits on the host (the tail draws of `--tail-samples` read every
/// logit of a row).
pub fn forward_chunks(
    teacher: &Decoder,
    input: &Tensor,
    k: usize,
    host_topk: bool,
    mut emit: impl FnMut(Chunk) -> Result<()>,
) -> Result<()> {
    let (b, s) = input.dims2().ctx("teacher input")?;
    let hidden = teacher
        .forward_hidden(input, Mode::Infer)
        .ctx("teacher forward")?;
    let hidden = hidden
        .reshape((b * s, hidden.dim(2).ctx("teacher forward")?))
        .ctx("teacher forward")?;
    let positions = b * s;
    let chunk = chunk_rows(teacher);
    let mut start = 0;
    while start < positions {
        let n = chunk.min(positions - start);
        let logits = teacher
            .logits(&hidden.narrow(0, start, n).ctx("lm_head")?)
            .ctx("lm_head")?;
        if logits.device().is_cpu() {
            emit(Chunk::Logits { start, logits })?;
        } else if host_topk {
            let logits = logits
                .to_device(&Device::Cpu)
                .ctx("copying logits to the host")?;
            emit(Chunk::Logits { start, logits })?;
        } else {
            // On a GPU: top-k and tail on the device; only [n, k] ids and log-probs and [n]
            // tails come back.
            let (ids, lp, tail) =
                device_topk::topk_blocks(&logits, k).ctx("top-k on the device")?;
            let host = |t: Tensor| t.flatten_all().and_then(|t| t.to_device(&Device::Cpu));
            emit(Chunk::Selected {
                start,
                ids: host(ids)
                    .and_then(|t| t.to_vec1())
                    .ctx("copying top-k ids")?,
                logprobs: host(lp)
                    .and_then(|t| t.to_vec1())
                    .ctx("copying top-k log-probs")?,
                tails: host(tail).and_then(|t| t.to_vec1()).ctx("copying tails")?,
            })?;
        }
        start += n;
    }
    Ok(())
}

/// A batch being filled with the top-k of its chunks.
pub(super) struct Selected<'a> {
    rows: ShardBatch,
    /// Where the top-k of host logits runs ([`topk_pool`]).
    pool: &'a rayon::ThreadPool,
    /// f32 log-probs, `[positions, k]`, converted to f16 once the batch is complete.
    logprobs: Vec<f32>,
    /// f32 log-probs of the tail draws, `[positions, draws]`, likewise.
    draw_logprobs: Vec<f32>,
    teacher_path: &'a Path,
    /// The forward's dtype, for the hint of a non-finite logit.
    dtype: FloatType,
}

impl<'a> Selected<'a> {
    pub(super) fn new(
        rows: ShardBatch,
        teacher_path: &'a Path,
        dtype: FloatType,
        pool: &'a rayon::ThreadPool,
    ) -> Self {
        let logprobs = vec![0f32; rows.topk_ids.len()];
        let draw_logprobs = vec![0f32; rows.draw_ids.len()];
        Self {
            rows,
            pool,
            logprobs,
            draw_logprobs,
            teacher_path,
            dtype,
        }
    }

    fn non_finite(&self, position: usize, token: Option<usize>) -> Error {
        let s = self.rows.seq_len;
        let (seq, pos) = (position / s, position % s);
        let token = token.map(|v| format!(" (token {v})")).unwrap_or_default();
        let hint = match self.dtype {
            FloatType::F32 => {
                "the forward already runs in f32, so the weights themselves produce it: \
                 check the teacher's safetensors files"
            }
            FloatType::Bf16 | FloatType::F16 => "try --dtype f32",
        };
        Error::ModelOutput {
            path: self.teacher_path.to_path_buf(),
            msg: format!(
                "the teacher produced a non-finite logit{token} at sequence {} position {pos}; {hint}",
                self.rows.seq_ids[seq]
            ),
        }
    }

    pub(super) fn add(&mut self, chunk: Chunk) -> Result<()> {
        let k = self.rows.k;
        match chunk {
            Chunk::Selected {
                start,
                ids,
                logprobs,
                tails,
            } => {
                if let Some(p) = logprobs.iter().position(|x| !x.is_finite()) {
                    return Err(self.non_finite(start + p / k, None));
                }
                if self.rows.draws > 0 {
                    return Err(Error::Internal(
                        "tail draws need the logits on the host, not a device top-k".into(),
                    ));
                }
                let n = tails.len();
                self.rows.topk_ids[start * k..(start + n) * k].copy_from_slice(&ids);
                self.logprobs[start * k..(start + n) * k].copy_from_slice(&logprobs);
                self.rows.tail_logmass[start..start + n].copy_from_slice(&tails);
            }
            Chunk::Logits { start, logits } => {
                let (n, vocab) = logits.dims2().ctx("logits")?;
                let (storage, layout) = logits.storage_and_layout();
                let candle_core::Storage::Cpu(cpu) = &*storage else {
                    return Err(Error::Internal("logits are not on the host".into()));
                };
                let data = cpu.as_slice::<f32>().ctx("logits")?;
                let (lo, hi) = layout
                    .contiguous_offsets()
                    .ok_or_else(|| Error::Internal("logits are not contiguous".into()))?;
                let ids = &mut self.rows.topk_ids[start * k..(start + n) * k];
                let lps = &mut self.logprobs[start * k..(start + n) * k];
                let tails = &mut self.rows.tail_logmass[start..start + n];
                let result = self
                    .pool
                    .install(|| topk::topk_rows(&data[lo..hi], vocab, k, ids, lps, tails));
                if let Err((r, v)) = result {
                    return Err(self.non_finite(start + r, Some(v)));
                }
                let d = self.rows.draws;
                if d > 0 {
                    let rows = &mut self.rows;
                    let draw_ids = &mut rows.draw_ids[start * d..(start + n) * d];
                    let draw_lps = &mut self.draw_logprobs[start * d..(start + n) * d];
                    let (seq_ids, seq_len, topk) = (&rows.seq_ids, rows.seq_len, &rows.topk_ids);
                    self.pool.install(|| {
                        tail_sample::draw_rows(
                            &data[lo..hi],
                            vocab,
                            &topk[start * k..(start + n) * k],
                            k,
                            seq_ids,
                            seq_len,
                            start,
                            draw_ids,
                            draw_lps,
                        )
                    });
                }
            }
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> ShardBatch {
        self.rows
            .topk_logprobs
            .convert_from_f32_slice(&self.logprobs);
        self.rows
            .draw_logprobs
            .convert_from_f32_slice(&self.draw_logprobs);
        self.rows
    }
}
