//! The values a numeric option accepts, defined once per option and checked in three places
//! with the same words: clap's value parser (a flag is refused while the command line is
//! parsed), [`super::merge_file`] (a pipeline file's key goes through the same value parser),
//! and the stages' `validate` (options built in code).
//!
//! ```
//! use taidcache::config::bounds::{self, Bounds};
//! assert_eq!(bounds::positive("3e-4"), Ok(3e-4));
//! assert_eq!(bounds::positive("nan").unwrap_err(), "nan is not a finite number");
//! assert_eq!(Bounds::UNIT.check(1.5).unwrap_err(), "1.5 is not in [0, 1]");
//! assert_eq!(bounds::at_least_one("-1").unwrap_err(), "-1 is not a whole number ≥ 1");
//! ```

use std::fmt;

use crate::error::{Error, Result};

/// An interval of finite numbers; NaN and ±inf are never in it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    lo: f64,
    lo_open: bool,
    hi: f64,
    hi_open: bool,
}

impl Bounds {
    /// (0, ∞): learning rates, epochs.
    pub const POSITIVE: Bounds = Bounds::new(0.0, true, f64::INFINITY, true);
    /// [0, ∞): weight decay, clipping norm, loss weights, TAID's step size.
    pub const NON_NEGATIVE: Bounds = Bounds::new(0.0, false, f64::INFINITY, true);
    /// [0, 1]: TAID's interpolation t.
    pub const UNIT: Bounds = Bounds::new(0.0, false, 1.0, false);
    /// [0, 1): fractions that must leave something, momenta.
    pub const UNIT_BELOW_ONE: Bounds = Bounds::new(0.0, false, 1.0, true);
    /// (0, 1): the λ of the skewed divergences.
    pub const OPEN_UNIT: Bounds = Bounds::new(0.0, true, 1.0, true);

    const fn new(lo: f64, lo_open: bool, hi: f64, hi_open: bool) -> Self {
        Bounds {
            lo,
            lo_open,
            hi,
            hi_open,
        }
    }

    /// Whether `v` lies in the interval (never for NaN or ±inf).
    pub fn contains(self, v: f64) -> bool {
        v.is_finite()
            && if self.lo_open {
                v > self.lo
            } else {
                v >= self.lo
            }
            && if self.hi_open {
                v < self.hi
            } else {
                v <= self.hi
            }
    }

    /// `v`, or the sentence saying why it is refused.
    pub fn check(self, v: f64) -> std::result::Result<f64, String> {
        if !v.is_finite() {
            Err(format!("{} is not a finite number", show(v)))
        } else if !self.contains(v) {
            Err(format!("{} is not in {self}", show(v)))
        } else {
            Ok(v)
        }
    }

    /// [`Self::check`] for `validate`: the refusal names `flag`.
    pub fn check_flag(self, flag: &str, v: f64) -> Result<()> {
        self.check(v)
            .map(drop)
            .map_err(|msg| Error::flag(flag, msg))
    }

    /// Parse `s` as a number in the interval.
    pub fn parse(self, s: &str) -> std::result::Result<f64, String> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number"))?;
        self.check(v)
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hi = if self.hi.is_infinite() {
            "∞".to_string()
        } else {
            self.hi.to_string()
        };
        write!(
            f,
            "{}{}, {}{}",
            if self.lo_open { '(' } else { '[' },
            self.lo,
            hi,
            if self.hi_open { ')' } else { ']' }
        )
    }
}

/// `v` as a user wrote it: `1e300` rather than three hundred digits, `nan` and `inf` in lower case.
pub(crate) fn show(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else if v != 0.0 && !(1e-5..1e16).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// clap value parser: a number in (0, ∞).
pub fn positive(s: &str) -> std::result::Result<f64, String> {
    Bounds::POSITIVE.parse(s)
}

/// clap value parser: a number in [0, ∞).
pub fn non_negative(s: &str) -> std::result::Result<f64, String> {
    Bounds::NON_NEGATIVE.parse(s)
}

/// clap value parser: a number in [0, ∞), as f32.
pub fn non_negative_f32(s: &str) -> std::result::Result<f32, String> {
    f32_of(Bounds::NON_NEGATIVE.parse(s)?)
}

/// clap value parser: a number in [0, 1].
pub fn unit(s: &str) -> std::result::Result<f64, String> {
    Bounds::UNIT.parse(s)
}

/// clap value parser: a number in [0, 1).
pub fn unit_below_one(s: &str) -> std::result::Result<f64, String> {
    Bounds::UNIT_BELOW_ONE.parse(s)
}

/// clap value parser: a number in (0, 1), as f32.
pub fn open_unit_f32(s: &str) -> std::result::Result<f32, String> {
    f32_of(Bounds::OPEN_UNIT.parse(s)?)
}

fn f32_of(v: f64) -> std::result::Result<f32, String> {
    let narrow = v as f32;
    if narrow.is_finite() {
        Ok(narrow)
    } else {
        Err(format!("{} is out of the range of f32", show(v)))
    }
}

/// A whole number ≥ `min`, with a sentence for negative, fractional and too-large values
/// (clap's own integer parsers say "invalid digit found in string").
fn whole(s: &str, min: u64) -> std::result::Result<u64, String> {
    let t = s.trim();
    match t.parse::<i128>() {
        Ok(v) if v >= i128::from(min) => {
            u64::try_from(v).map_err(|_| format!("{t} is too large (at most {})", u64::MAX))
        }
        _ => Err(format!("{t} is not a whole number ≥ {min}")),
    }
}

/// clap value parser: a count from 1 (sizes, steps, batch sizes).
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    usize_of(whole(s, 1)?)
}

/// clap value parser: a count from 1, as u64.
pub fn at_least_one_u64(s: &str) -> std::result::Result<u64, String> {
    whole(s, 1)
}

/// clap value parser: a count from 0 (indices, intervals where 0 means "off", seeds).
pub fn count(s: &str) -> std::result::Result<usize, String> {
    usize_of(whole(s, 0)?)
}

/// clap value parser: a count from 0, as u64.
pub fn count_u64(s: &str) -> std::result::Result<u64, String> {
    whole(s, 0)
}

fn usize_of(v: u64) -> std::result::Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{v} is too large for this machine"))
}

/// clap value parser: a zstd level, 1..=22.
pub fn zstd_level(s: &str) -> std::result::Result<i32, String> {
    match whole(s, 1) {
        Ok(v) if v <= 22 => Ok(v as i32),
        _ => Err(format!("{} is not a zstd level (1..=22)", s.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_refused_by_every_float_parser() {
        type Parser = fn(&str) -> std::result::Result<f64, String>;
        let parsers: [Parser; 4] = [positive, non_negative, unit, unit_below_one];
        for p in parsers {
            for (s, shown) in [
                ("nan", "nan"),
                ("NaN", "nan"),
                ("inf", "inf"),
                ("-inf", "-inf"),
                ("infinity", "inf"),
                ("1e400", "inf"),
            ] {
                assert_eq!(p(s).unwrap_err(), format!("{shown} is not a finite number"));
            }
        }
        for s in ["nan", "inf"] {
            assert!(non_negative_f32(s).is_err() && open_unit_f32(s).is_err());
        }
        // finite in f64, not in f32
        assert_eq!(
            non_negative_f32("1e300").unwrap_err(),
            "1e300 is out of the range of f32"
        );
    }

    #[test]
    fn intervals_include_and_exclude_their_ends_as_written() {
        assert_eq!(positive("0").unwrap_err(), "0 is not in (0, ∞)");
        assert_eq!(non_negative("0"), Ok(0.0));
        assert_eq!(non_negative("-0.5").unwrap_err(), "-0.5 is not in [0, ∞)");
        assert_eq!((unit("0"), unit("1")), (Ok(0.0), Ok(1.0)));
        assert_eq!(unit_below_one("1").unwrap_err(), "1 is not in [0, 1)");
        assert_eq!(open_unit_f32("0").unwrap_err(), "0 is not in (0, 1)");
        assert_eq!(open_unit_f32("0.25"), Ok(0.25));
        assert_eq!(positive("x").unwrap_err(), "`x` is not a number");
    }

    #[test]
    fn counts_name_negative_fractional_and_oversized_values() {
        assert_eq!(
            at_least_one("0").unwrap_err(),
            "0 is not a whole number ≥ 1"
        );
        assert_eq!(
            at_least_one("-1").unwrap_err(),
            "-1 is not a whole number ≥ 1"
        );
        assert_eq!(count("1.5").unwrap_err(), "1.5 is not a whole number ≥ 0");
        assert_eq!((count("0"), at_least_one(" 7 ")), (Ok(0), Ok(7)));
        assert_eq!(
            count_u64("18446744073709551616").unwrap_err(),
            "18446744073709551616 is too large (at most 18446744073709551615)"
        );
        assert_eq!((zstd_level("22"), zstd_level("1")), (Ok(22), Ok(1)));
        assert_eq!(
            zstd_level("23").unwrap_err(),
            "23 is not a zstd level (1..=22)"
        );
        assert_eq!(
            zstd_level("-3").unwrap_err(),
            "-3 is not a zstd level (1..=22)"
        );
    }
}
