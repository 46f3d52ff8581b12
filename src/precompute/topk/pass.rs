//! One row's scalar state between the driver's chunks ([`Pass`]): the pool of candidates as
//! rank keys, the threshold, the running maximum and the f64 tail sum; then the normalization,
//! and the exact tail of a row whose tail is below the vector `exp`'s floor.
//!
//! Nothing here is vectorized or kernel-specific: every kernel shares it, so the three kernels
//! select, break ties and normalize alike.

use super::portable::exp_le0;

/// Candidates gathered beyond the k best before they are cut back to k ([`Pass::compact`]).
pub(super) const POOL_EXTRA: usize = 64;

/// A candidate (value, id) as one integer whose ascending order is the selection's: the larger
/// value first, then the smaller id (values in `f32::total_cmp` order). Integer keys make the
/// pool's `select_nth_unstable` and final sort branch-free compares instead of a closure.
#[inline(always)]
pub(super) fn rank_key(x: f32, id: u32) -> u64 {
    let b = x.to_bits();
    // Monotone in x: negative values have every bit flipped, positive ones the sign bit set.
    let ord = if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    };
    ((!ord as u64) << 32) | id as u64
}

/// The (value, id) of a [`rank_key`].
#[inline(always)]
pub(super) fn from_rank_key(key: u64) -> (f32, u32) {
    let ord = !((key >> 32) as u32);
    let b = if ord & 0x8000_0000 != 0 {
        ord & 0x7FFF_FFFF
    } else {
        !ord
    };
    (f32::from_bits(b), key as u32)
}

/// A non-finite logit was met; its position is found afterwards ([`first_non_finite`]).
pub(super) struct NonFinite;

/// One row's pass between chunks: the k best so far and the candidates since, the running
/// maximum `max`, and the tail sum relative to it in f64 (the vector lanes are folded into it).
///
/// Candidates are not sorted in one at a time: they are appended to `pool` ([`rank_key`]) behind
/// the k best, and every [`POOL_EXTRA`] of them the pool is cut back to its k best
/// (`select_nth_unstable`), the rest joining the tail. The threshold then only rises at a cut,
/// so a little more of the row passes it, but each candidate costs an append instead of a
/// binary search and two shifts of the sorted k. That matters on a random teacher's nearly flat
/// logits, which put candidates in most chunks (`topk/select_flat_cached_1t`; the counts and
/// timings are in `docs/performance.md`).
pub(super) struct Pass<'a> {
    ids: &'a mut [u32],
    logprobs: &'a mut [f32],
    pool: Vec<u64>,
    /// The k-th value at the last cut: every later element at or below it is in the tail.
    thr: f32,
    pub(super) max: f32,
    pub(super) tail: f64,
}

impl<'a> Pass<'a> {
    /// The first k elements of the row are the k best so far; the results go to `ids` and
    /// `logprobs` (length k) at [`Pass::finish`].
    #[inline(always)]
    pub(super) fn start(
        row: &[f32],
        ids: &'a mut [u32],
        logprobs: &'a mut [f32],
    ) -> Result<Self, usize> {
        let k = ids.len();
        debug_assert!(k >= 1 && k <= row.len() && logprobs.len() == k);
        let mut pool = Vec::with_capacity(k + POOL_EXTRA);
        let (mut thr, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        for (j, &x) in row[..k].iter().enumerate() {
            if !x.is_finite() {
                return Err(j);
            }
            pool.push(rank_key(x, j as u32));
            thr = thr.min(x);
            max = max.max(x);
        }
        Ok(Self {
            ids,
            logprobs,
            pool,
            thr,
            max,
            tail: 0.0,
        })
    }

    /// Every later element at or below this value is in the tail: k elements before it are
    /// at least as large.
    #[inline(always)]
    pub(super) fn threshold(&self) -> f32 {
        self.thr
    }

    /// One candidate at `pos`: an element above the threshold as it stood when the vector
    /// loop ran over its chunk, or a non-finite one (an error). The vector loop left it out of
    /// its sums; `tail` is rescaled here on a new maximum, the kernel's unfolded lanes after the
    /// chunk's candidates ([`Pass::rescale_from`]).
    #[inline]
    pub(super) fn candidate(&mut self, x: f32, pos: usize) -> Result<(), NonFinite> {
        if !x.is_finite() {
            return Err(NonFinite);
        }
        if x <= self.thr {
            // The threshold rose at a cut earlier in this chunk.
            self.tail += exp_le0::<false>(x - self.max) as f64;
            return Ok(());
        }
        if x > self.max {
            self.tail *= ((self.max - x) as f64).exp();
            self.max = x;
        }
        self.pool.push(rank_key(x, pos as u32));
        if self.pool.len() == self.ids.len() + POOL_EXTRA {
            self.compact();
        }
        Ok(())
    }

    /// Cut the pool back to its k best; the rest joins the tail, and the k-th value becomes the
    /// threshold.
    #[cold]
    fn compact(&mut self) {
        let k = self.ids.len();
        self.pool.select_nth_unstable(k - 1);
        let max = self.max;
        // The vector loop's exp (relative error below 3e-7), not libm's, summed in 8 f32 lanes
        // as the vector loop sums: most of the candidates end here, and one f64 add per term
        // was a dependency chain.
        let mut lanes = [0f32; 8];
        let mut it = self.pool[k..].chunks_exact(8);
        for c in &mut it {
            for l in 0..8 {
                lanes[l] += exp_le0::<false>(from_rank_key(c[l]).0 - max);
            }
        }
        for &key in it.remainder() {
            lanes[0] += exp_le0::<false>(from_rank_key(key).0 - max);
        }
        self.tail += lanes.iter().map(|&v| v as f64).sum::<f64>();
        self.pool.truncate(k);
        self.thr = from_rank_key(self.pool[k - 1]).0;
    }

    /// Every candidate of `chunk` (at `start` in the row): the elements above `thr` (the
    /// threshold when the vector loop ran over the chunk) or NaN, in order.
    #[inline]
    pub(super) fn candidates(
        &mut self,
        chunk: &[f32],
        start: usize,
        thr: f32,
    ) -> Result<(), NonFinite> {
        for (off, &x) in chunk.iter().enumerate() {
            if x > thr || x.is_nan() {
                self.candidate(x, start + off)?;
            }
        }
        Ok(())
    }

    /// The factor that takes vector lanes summed relative to `old_max` to the current maximum,
    /// if the chunk's candidates raised it.
    #[inline(always)]
    pub(super) fn rescale_from(&self, old_max: f32) -> Option<f32> {
        (self.max != old_max).then(|| ((old_max - self.max) as f64).exp() as f32)
    }

    /// Normalize: the k best sorted into `ids` / `logprobs` as log-probs, and the tail
    /// log-mass. `bad` is set when the vector loop saw a non-finite logit it did not report
    /// (−∞ in its minimum, NaN in its sums).
    #[inline(always)]
    pub(super) fn finish(mut self, row: &[f32], bad: bool) -> Result<f32, usize> {
        let k = self.ids.len();
        if self.pool.len() > k {
            self.compact();
        }
        let Pass {
            ids,
            logprobs: vals,
            mut pool,
            max,
            mut tail,
            ..
        } = self;
        if bad || tail.is_nan() {
            return Err(first_non_finite(row));
        }
        pool.sort_unstable();
        for ((v, id), &key) in vals.iter_mut().zip(ids.iter_mut()).zip(&pool) {
            (*v, *id) = from_rank_key(key);
        }
        // Each element the vector loop dropped was below e^-87 = 1.7e-38: they can only matter
        // (relative error above 1e-6) if the whole tail is that small.
        if tail < row.len() as f64 * 1.7e-32 && row.len() > k {
            tail = exact_tail(row, ids, max);
        }
        let top: f64 = vals.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let log_z = max as f64 + (top + tail).ln();
        for v in vals.iter_mut() {
            *v = (*v as f64 - log_z) as f32;
        }
        Ok(if tail > 0.0 {
            (max as f64 + tail.ln() - log_z) as f32
        } else {
            f32::NEG_INFINITY
        })
    }
}

/// The position of the first non-finite logit of a row known to hold one.
#[cold]
pub(super) fn first_non_finite(row: &[f32]) -> usize {
    row.iter().position(|x| !x.is_finite()).unwrap_or(0)
}

/// `Σ_{y∉K} exp(x_y − max)` in f64, for the rare row whose tail is too small for the vector loop.
#[cold]
pub(super) fn exact_tail(row: &[f32], ids: &[u32], max: f32) -> f64 {
    let mut kept = ids.to_vec();
    kept.sort_unstable();
    let mut next = kept.iter().peekable();
    let mut total = 0f64;
    for (y, &x) in row.iter().enumerate() {
        if next.peek() == Some(&&(y as u32)) {
            next.next();
            continue;
        }
        total += ((x - max) as f64).exp();
    }
    total
}
