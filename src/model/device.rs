//! Where a model runs and in which float type: typed forms of `--device` and `--dtype`, parsed
//! once at the command line's edge.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

/// `cpu` or `cuda:N` (`cuda` alone is `cuda:0`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// Open the device. The error says why it is not usable (no `cuda` feature, no such GPU);
    /// the caller names its flag.
    pub fn open(self) -> Result<Device, String> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(format!("`{self}` asks for CUDA, but this taidcache was built without the `cuda` feature (rebuild with `--features cuda`)"));
                }
                Device::new_cuda(ordinal)
                    .map_err(|e| format!("`{self}`: no usable CUDA device ({e})"))
            }
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not `cpu` or `cuda:N`");
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(bad),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

/// The float types a model is run or saved in: `f32`, `bf16` or `f16`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    #[default]
    F32,
    Bf16,
    F16,
}

impl FloatType {
    pub fn dtype(self) -> DType {
        match self {
            FloatType::F32 => DType::F32,
            FloatType::Bf16 => DType::BF16,
            FloatType::F16 => DType::F16,
        }
    }

    /// `f32`, `bf16` or `f16`: the manifest's `dtype` and the flag's value.
    pub fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "f32",
            FloatType::Bf16 => "bf16",
            FloatType::F16 => "f16",
        }
    }
}

impl fmt::Display for FloatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse_print_and_refuse_other_words() {
        for (text, spec, shown) in [
            ("cpu", DeviceSpec::Cpu, "cpu"),
            ("cuda", DeviceSpec::Cuda(0), "cuda:0"),
            ("cuda:3", DeviceSpec::Cuda(3), "cuda:3"),
        ] {
            assert_eq!(text.parse::<DeviceSpec>(), Ok(spec));
            assert_eq!(spec.to_string(), shown);
        }
        for bad in ["gpu", "cuda:", "cuda:x", "cuda0", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains("`cpu` or `cuda:N`"), "{bad}: {e}");
        }
        assert_eq!(
            serde_json::to_string(&DeviceSpec::Cuda(1)).unwrap(),
            "\"cuda:1\""
        );
    }

    #[test]
    fn float_types_serialize_as_their_flag_values() {
        for t in [FloatType::F32, FloatType::Bf16, FloatType::F16] {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.name()));
            assert_eq!(serde_json::from_str::<FloatType>(&json).unwrap(), t);
        }
    }
}
