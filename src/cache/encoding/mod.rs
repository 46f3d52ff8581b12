//! How a shard stores its top-k records: one module per value encoding, and [`Codec`], the one
//! entry point the writer (encode) and the reader (decode) and `verify` (error bounds) share.
//!
//! | encoding | format | ids | log-probs | module |
//! |---|---|---|---|---|
//! | `plain` | v1 | rank order, u32 | f16 | [`plain`] |
//! | `steps` | v2 | rank order, u32 | u8 steps of 0.125 nats | [`steps`] |
//! | `compact` | v3 | ascending, as gaps | u8 levels uniform in √p | [`levels`] |
//!
//! The format version of a cache is its encoding's: the mapping lives here and nowhere else.

pub mod levels;
pub mod plain;
pub mod steps;

use std::sync::Arc;

use arrow::array::{ArrayRef, UInt32Array, UInt8Array};
use half::f16;

pub use steps::LOGPROB_STEP;

/// Version of the on-disk format of the default (`plain`) encoding (`schemas/v1/`).
pub const FORMAT_VERSION: u32 = 1;

/// Version of the format of the `steps` encoding (`schemas/v2/`, the compact encoding of
/// earlier releases): v1 with the log-probs as 8-bit quantized steps instead of half floats,
/// and the ids byte-stream-split.
pub const FORMAT_VERSION_STEPS: u32 = 2;

/// Version of the format of the `compact` encoding (`schemas/v3/`): each position's top-k
/// sorted by id, the ids as gaps and the log-probs as 8-bit levels ([`levels`]).
pub const FORMAT_VERSION_COMPACT: u32 = 3;

/// Version of the format of a `plain` cache with tail draws (`precompute --tail-samples N`,
/// `schemas/v4/`): v1 plus the columns `tail_draw_ids` and `tail_draw_logprobs`.
pub const FORMAT_VERSION_DRAWS: u32 = 4;

/// Version of the format of a `compact` cache with tail draws (`schemas/v5/`): v3 plus the
/// columns `tail_draw_id_gaps` and `tail_draw_logprobs`.
pub const FORMAT_VERSION_COMPACT_DRAWS: u32 = 5;

/// Value encoding of `topk_logprob_levels` in format v3: one of the 256 levels of
/// [`levels::table`] per log-prob, listed in the footer.
pub const VALUE_ENCODING_U8_LEVELS: &str = "u8-levels";

/// Value encoding of `topk_logprob_steps` in format v2: unsigned 8-bit steps of
/// [`LOGPROB_STEP`] nats along the descending log-probs.
pub const VALUE_ENCODING_U8_STEPS: &str = "u8-steps";

/// How a cache stores its top-k records (`precompute --encoding`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// Format v1: u32 ids, f16 log-probs (about 140 bytes per token at k = 50).
    #[default]
    Plain,
    /// Format v3: per position the top-k sorted by id, ids as gaps, log-probs as u8 levels
    /// uniform in √p (about 100 bytes per token at k = 50 on a 151,936-token vocabulary; mean
    /// KL to the exact top-k below 1e-3).
    Compact,
    /// Format v2, the compact encoding of earlier releases: ids in rank order, log-probs as u8
    /// steps of 0.125 nats.
    Steps,
}

impl Encoding {
    /// Every encoding, for flags and messages.
    pub const ALL: [Encoding; 3] = [Encoding::Plain, Encoding::Compact, Encoding::Steps];

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Plain => "plain",
            Encoding::Compact => "compact",
            Encoding::Steps => "steps",
        }
    }

    /// The format version a cache of this encoding carries.
    pub fn format_version(self) -> u32 {
        match self {
            Encoding::Plain => FORMAT_VERSION,
            Encoding::Compact => FORMAT_VERSION_COMPACT,
            Encoding::Steps => FORMAT_VERSION_STEPS,
        }
    }

    /// The format version of a cache of this encoding with `draws` tail draws per position
    /// (`precompute --tail-samples`); `None` for an encoding that has no format with draws.
    pub fn format_version_with(self, draws: usize) -> Option<u32> {
        match (self, draws) {
            (_, 0) => Some(self.format_version()),
            (Encoding::Plain, _) => Some(FORMAT_VERSION_DRAWS),
            (Encoding::Compact, _) => Some(FORMAT_VERSION_COMPACT_DRAWS),
            (Encoding::Steps, _) => None,
        }
    }

    /// Whether a format version's shards hold tail draws.
    pub fn version_has_draws(version: u64) -> bool {
        version == u64::from(FORMAT_VERSION_DRAWS)
            || version == u64::from(FORMAT_VERSION_COMPACT_DRAWS)
    }

    /// The encoding of a format version this build reads.
    pub fn from_format_version(version: u64) -> Option<Self> {
        match version {
            v if v == u64::from(FORMAT_VERSION_DRAWS) => Some(Encoding::Plain),
            v if v == u64::from(FORMAT_VERSION_COMPACT_DRAWS) => Some(Encoding::Compact),
            _ => Self::ALL
                .into_iter()
                .find(|e| u64::from(e.format_version()) == version),
        }
    }

    /// The encoding of format `version`, or the one message for a version this build does not
    /// read (the caller names the file).
    pub fn of_format_version(version: u64) -> std::result::Result<Self, String> {
        Self::from_format_version(version).ok_or_else(|| {
            format!(
                "cache format version {version}, this taidcache reads {} (re-create the cache, or use a taidcache that reads version {version})",
                readable_versions()
            )
        })
    }

    /// Whether each position's ids are stored in ascending id order (and the log-probs in that
    /// order) rather than by descending log-prob.
    pub fn sorted_by_id(self) -> bool {
        self == Encoding::Compact
    }

    /// The manifest's `value_encoding` for this encoding.
    pub fn value_encoding(self) -> &'static str {
        match self {
            Encoding::Plain => VALUE_ENCODING_F16,
            Encoding::Compact => VALUE_ENCODING_U8_LEVELS,
            Encoding::Steps => VALUE_ENCODING_U8_STEPS,
        }
    }
}

/// The format versions this build reads, for messages: `1, 2, 3, 4 and 5`.
pub fn readable_versions() -> String {
    format!("{FORMAT_VERSION}, {FORMAT_VERSION_STEPS}, {FORMAT_VERSION_COMPACT}, {FORMAT_VERSION_DRAWS} and {FORMAT_VERSION_COMPACT_DRAWS}")
}

/// Value encoding of `topk_logprobs` in format v1: IEEE half floats.
pub const VALUE_ENCODING_F16: &str = "f16";

/// The values column of a decoded row group, typed by its encoding.
#[derive(Clone, Copy, Debug)]
pub enum Values<'a> {
    /// Format v1: log-probs as they are.
    F16(&'a [f16]),
    /// Formats v2 and v3: steps or levels.
    U8(&'a [u8]),
}

/// An encoding with the parameters a shard's footer gives it (the step of format v2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Codec {
    encoding: Encoding,
    /// Quantization step of a v2 (steps) shard, nats; [`LOGPROB_STEP`] for writing.
    logprob_step: f32,
}

impl Codec {
    /// The codec this build writes `encoding` with.
    pub fn for_writing(encoding: Encoding) -> Self {
        Self {
            encoding,
            logprob_step: LOGPROB_STEP,
        }
    }

    /// The codec of a shard of `encoding` whose footer values `footer(key)` gives; the error
    /// names the footer key that is missing or wrong.
    pub fn from_footer(
        encoding: Encoding,
        footer: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<Self, String> {
        let mut codec = Self::for_writing(encoding);
        match encoding {
            Encoding::Plain => {}
            Encoding::Compact => {
                let key = levels::FOOTER_KEY;
                let value = footer(key).unwrap_or_default();
                levels::check_footer_value(&value)
                    .map_err(|msg| format!("footer metadata `{key}` {msg}"))?;
            }
            Encoding::Steps => {
                let key = steps::FOOTER_KEY;
                let value = footer(key).unwrap_or_default();
                codec.logprob_step = match value.parse::<f32>() {
                    Ok(step) if step.is_finite() && step > 0.0 => step,
                    _ => {
                        return Err(format!(
                            "footer metadata `{key}` = {value:?} is not a positive number"
                        ))
                    }
                };
            }
        }
        Ok(codec)
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The footer entries this encoding adds to format version, top-k and seq_len.
    pub fn footer(&self) -> Vec<(&'static str, String)> {
        match self.encoding {
            Encoding::Plain => Vec::new(),
            Encoding::Steps => vec![(steps::FOOTER_KEY, self.logprob_step.to_string())],
            Encoding::Compact => vec![(levels::FOOTER_KEY, levels::footer_value())],
        }
    }

    /// The ids and values arrays (flat, `k` per position) of positions whose top-k are `ids`
    /// and `logprobs` in rank order.
    pub fn encode(&self, ids: &[u32], logprobs: &[f16], k: usize) -> (ArrayRef, ArrayRef) {
        match self.encoding {
            Encoding::Plain => {
                let (ids, values) = plain::encode(ids, logprobs);
                (Arc::new(ids), Arc::new(values))
            }
            Encoding::Steps => {
                let mut steps = Vec::with_capacity(logprobs.len());
                steps::encode(logprobs, k, &mut steps);
                (
                    Arc::new(UInt32Array::from(ids.to_vec())),
                    Arc::new(UInt8Array::from(steps)),
                )
            }
            Encoding::Compact => {
                let mut gaps = Vec::with_capacity(ids.len());
                let mut lv = Vec::with_capacity(ids.len());
                let mut scratch = Vec::with_capacity(k);
                for (ids, lps) in ids.chunks(k).zip(logprobs.chunks(k)) {
                    levels::encode_position(ids, lps, &mut gaps, &mut lv, &mut scratch);
                }
                (
                    Arc::new(UInt32Array::from(gaps)),
                    Arc::new(UInt8Array::from(lv)),
                )
            }
        }
    }

    /// Whether the values column holds f16 log-probs (else u8 steps or levels).
    pub fn values_are_f16(&self) -> bool {
        self.encoding == Encoding::Plain
    }

    /// Append the decoded ids and f16 log-probs of `ids` and `values` (`k` per position) to
    /// `out_ids` and `out_logprobs`. The error says the values column has the wrong type.
    pub fn decode(
        &self,
        ids: &[u32],
        values: Values<'_>,
        k: usize,
        out_ids: &mut Vec<u32>,
        out_logprobs: &mut Vec<f16>,
    ) -> std::result::Result<(), String> {
        match (self.encoding, values) {
            (Encoding::Plain, Values::F16(lps)) => plain::decode(ids, lps, out_ids, out_logprobs),
            (Encoding::Steps, Values::U8(steps)) => {
                out_ids.extend_from_slice(ids);
                steps::decode(steps, k, self.logprob_step, out_logprobs);
            }
            (Encoding::Compact, Values::U8(lv)) => {
                levels::Decoder::get().decode(ids, lv, k, out_ids, out_logprobs)
            }
            (encoding, _) => {
                return Err(format!(
                    "the values column does not hold the {} encoding's type",
                    encoding.name()
                ))
            }
        }
        Ok(())
    }

    /// The largest |p − p̂| that quantization (beyond f16 rounding) may put on a probability
    /// decoded as `decoded`: 0 for plain, half a step for steps, the level's bound for compact.
    pub fn error_bound(&self, decoded: f64) -> f64 {
        match self.encoding {
            Encoding::Plain => 0.0,
            Encoding::Steps => steps::error_bound(decoded, self.logprob_step),
            Encoding::Compact => levels::error_bound(decoded),
        }
    }
}
