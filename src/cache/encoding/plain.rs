//! The value encoding of format v1 (`--encoding plain`, the default, `schemas/v1/`): each
//! position's ids in rank order as u32 and their log-probs as IEEE half floats, exactly what
//! Arrow tools read without knowing taidcache.

use arrow::array::{Float16Array, UInt32Array};
use half::f16;

/// The ids and log-probs as their Arrow arrays (copied).
pub fn encode(ids: &[u32], logprobs: &[f16]) -> (UInt32Array, Float16Array) {
    (
        UInt32Array::from(ids.to_vec()),
        Float16Array::from(logprobs.to_vec()),
    )
}

/// Append the stored ids and log-probs as they are.
pub fn decode(ids: &[u32], logprobs: &[f16], out_ids: &mut Vec<u32>, out_logprobs: &mut Vec<f16>) {
    out_ids.extend_from_slice(ids);
    out_logprobs.extend_from_slice(logprobs);
}
