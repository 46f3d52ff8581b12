//! The sparse loss's working memory is bounded by its chunk of positions, not by
//! batch × seq × vocab: measured with a counting global allocator (this test binary's own).
//!
//! 1. `objectives::loss_and_grad` over N positions in one call allocates (besides its inputs and
//!    the gradient buffer, allocated before) nothing that grows with N: the 48-byte sums of one
//!    block of `SUM_BLOCK` positions and an O(k) scratch per rayon job. Every objective and tail
//!    mode at 64 positions, each path (closed-form KL, generic, CE) at 1024 (four blocks).
//! 2. `trainer::micro_batch`, which slices a micro-batch's positions into chunks of
//!    `LOSS_CHUNK_BYTES` of logits, allocates a few `[chunk, vocab]` buffers on top of the
//!    student's own forward/backward, whatever the number of positions: 1024 and 4096 positions
//!    at vocab 32,000 (524 positions per chunk) peak at the same level, where one
//!    `[positions, vocab]` f32 buffer would be 125 and 500 MiB.
//!
//! The measurements share the process-wide counter, so they run one at a time (a mutex).

mod memory_support;

use std::sync::Mutex;

use memory_support::*;
use taidcache::distill::objectives::{LossOutput, Objective, SUM_BLOCK};
use taidcache::distill::targets::TailMode;

static SERIAL: Mutex<()> = Mutex::new(());

const VOCAB: usize = 32_000;
const K: usize = 50;

/// Peak extra bytes allowed for one `loss_and_grad` call at `vocab` on `threads` threads, whatever
/// the number of positions: 256 KiB (the block's sums are 12 KiB) plus four vocabulary rows of f32
/// per thread. A single `[64, 32000]` f32 temporary is 8 MiB; a vocabulary row per position
/// exceeds it from 6 positions on (single-threaded).
fn loss_bound(vocab: usize, threads: usize) -> usize {
    (256 << 10) + threads * 4 * vocab * 4
}

#[test]
fn loss_and_grad_allocates_nothing_that_grows_with_the_positions() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let paths = [
        (Objective::Taid, TailMode::Student),
        (Objective::Kl, TailMode::Renorm),
        (Objective::Tvd, TailMode::Uniform),
        (Objective::Ce, TailMode::Student),
    ];
    let mut report = Vec::new();
    let mut worst = [0usize; 2];
    for (size, n) in [64usize, 1024].into_iter().enumerate() {
        assert!(n <= SUM_BLOCK || n >= 4 * SUM_BLOCK);
        let inputs = LossInputs::new(n, VOCAB, K, n as u64);
        let dense = n * VOCAB * 4;
        for objective in ALL_OBJECTIVES {
            for tail in ALL_TAILS {
                let Some(cfg) = loss_config(objective, tail) else {
                    continue;
                };
                let one_path = paths.contains(&(objective, tail));
                if n > SUM_BLOCK && !one_path {
                    continue;
                }
                let pools: &[usize] = if one_path { &[1, threads] } else { &[1] };
                for &t in pools {
                    let peak = loss_and_grad_peak(&cfg, &inputs, t);
                    let bound = loss_bound(VOCAB, t);
                    report.push(format!(
                        "{n} positions {objective:?}/{tail:?} {t} thread(s): {peak} B"
                    ));
                    if t == 1 {
                        worst[size] = worst[size].max(peak);
                    }
                    assert!(
                        peak <= bound,
                        "loss_and_grad over {n} positions × vocab {VOCAB} ({objective:?}, tail {tail:?}, \
                         {t} threads) allocated {peak} bytes ({:.3} MiB) on top of its inputs and gradient; \
                         the bound is {bound} bytes ({:.3} MiB), independent of the positions; a \
                         [positions, vocab] f32 temporary alone would be {dense} bytes ({:.1} MiB)",
                        mib(peak),
                        mib(bound),
                        mib(dense)
                    );
                }
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    // Sixteen times the positions: at most one block of sums more (single-threaded).
    assert!(
        worst[1] <= worst[0] + SUM_BLOCK * std::mem::size_of::<LossOutput>() + (16 << 10),
        "loss_and_grad peak extra grows with the positions: {} B at 64, {} B at 1024",
        worst[0],
        worst[1]
    );
}

#[test]
fn micro_batch_loss_memory_is_bounded_by_the_chunk_not_the_positions() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seq = 64;
    let dir = tempfile::tempdir().unwrap();
    let student = tiny_student(dir.path(), VOCAB, seq);
    let hidden = student.config.hidden_size;
    let cfg = loss_config(Objective::Taid, TailMode::Student).unwrap();
    // Warm up: candle's and rayon's one-time allocations are not the loss's.
    micro_batch_peak(&student, &shard_batch(1, seq, K, VOCAB), &cfg);
    let chunk = chunk_positions(VOCAB);
    let mut peaks = Vec::new();
    for positions in [1024usize, 4096] {
        assert!(positions > chunk, "both sizes span several chunks");
        let batch = shard_batch(positions / seq, seq, K, VOCAB);
        let model = model_peak(&student, &batch);
        let peak = micro_batch_peak(&student, &batch, &cfg);
        let bound = micro_batch_bound(positions, VOCAB, hidden, model);
        let dense = positions * VOCAB * 4;
        eprintln!(
            "micro_batch: {positions} positions × vocab {VOCAB} (chunks of {chunk}): peak extra {:.1} MiB \
             (student forward/backward alone {:.1} MiB), bound {:.1} MiB, one [positions, vocab] f32 buffer {:.1} MiB",
            mib(peak),
            mib(model),
            mib(bound),
            mib(dense)
        );
        assert!(
            peak <= bound,
            "micro_batch over {positions} positions × vocab {VOCAB} allocated {peak} bytes ({:.1} MiB) at its peak; \
             the bound (4 × [chunk = {chunk}, vocab] f32 + 4 × [vocab, hidden] + the student's own {model} bytes \
             + 16 MiB) is {bound} bytes ({:.1} MiB); one [positions, vocab] f32 buffer is {dense} bytes ({:.1} MiB)",
            mib(peak),
            mib(bound),
            mib(dense)
        );
        peaks.push((positions, peak, model));
    }
    // Four times the positions: the loss's share does not grow (the student's may, a little).
    let (small, large) = (peaks[0], peaks[1]);
    let loss_small = small.1.saturating_sub(small.2);
    let loss_large = large.1.saturating_sub(large.2);
    assert!(
        loss_large <= loss_small + 8 * MIB,
        "micro_batch minus the student's own peak: {} positions {loss_small} bytes ({:.1} MiB), {} positions \
         {loss_large} bytes ({:.1} MiB): it grows with the positions",
        small.0,
        mib(loss_small),
        large.0,
        mib(loss_large)
    );
}

/// Issue #19, item 13: one long text document streams through reading, tokenization and
/// packing: reading, tokenizing and packing one 20 MB `.txt` document peaks at most at twice
/// what one 2 MB document does, plus 16 MiB (it was ~160 bytes per byte of text, so 3.2 GB).
#[test]
fn one_huge_text_document_streams_in_memory_independent_of_its_length() {
    use std::sync::Arc;
    use taidcache::corpus::testing::sample_tokenizer;
    use taidcache::corpus::{CorpusOptions, DocumentReader, SequenceStream};

    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let tok = Arc::new(sample_tokenizer(400));
    let paragraph = "The teacher predicts the next word of long documents (42) quickly, \
                     héllo 日本語!\n\n    Every token packs   sequences of ids.\t";
    let write = |name: &str, bytes: usize| {
        let path = dir.path().join(name);
        std::fs::write(&path, paragraph.repeat(bytes / paragraph.len() + 1)).unwrap();
        path
    };
    let pack_all = |path: &std::path::Path| -> (u64, u64) {
        let reader = DocumentReader::new(&[path.to_path_buf()], &CorpusOptions::default()).unwrap();
        let stream = SequenceStream::new(reader, tok.clone(), 512, 0, 0, 400);
        let (mut seqs, mut checksum) = (0u64, 0u64);
        for s in stream {
            let s = s.unwrap();
            seqs += 1;
            checksum = checksum
                .wrapping_mul(31)
                .wrapping_add(s.input_ids[7] as u64);
        }
        (seqs, checksum)
    };
    let small = write("small.txt", 2_000_000);
    let large = write("large.txt", 20_000_000);
    let ((small_seqs, _), small_peak) = peak_extra(|| pack_all(&small));
    let ((large_seqs, _), large_peak) = peak_extra(|| pack_all(&large));
    eprintln!(
        "one document: 2 MB → {small_seqs} sequences, peak {:.1} MiB; 20 MB → {large_seqs} \
         sequences, peak {:.1} MiB",
        mib(small_peak),
        mib(large_peak)
    );
    assert!(large_seqs > 9 * small_seqs, "{small_seqs} vs {large_seqs}");
    assert!(
        large_peak <= 2 * small_peak + 16 * MIB,
        "one 20 MB document peaked at {large_peak} B ({:.1} MiB), one 2 MB document at \
         {small_peak} B ({:.1} MiB): memory grows with the document",
        mib(large_peak),
        mib(small_peak)
    );

    // The streamed ids are those of tokenizing the document whole (on a smaller one).
    let medium = write("medium.txt", 1_500_000);
    let text = std::fs::read_to_string(&medium).unwrap();
    let reader = DocumentReader::new(&[medium], &CorpusOptions::default()).unwrap();
    let stream = SequenceStream::new(reader, tok.clone(), 512, 0, 0, 400);
    let mut got = Vec::new();
    for s in stream {
        let s = s.unwrap();
        let real = s.loss_mask.iter().filter(|&&m| m).count();
        got.extend_from_slice(&s.input_ids[..real]);
    }
    let mut want = tok
        .encode_fast(text.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    want.push(0);
    assert!(got == want, "streamed ids differ from whole-document ids");
}
