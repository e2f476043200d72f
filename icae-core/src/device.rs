//! `--device cpu|cuda[:N]|auto` and the dtype that goes with it.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

use crate::error::ModelError;

/// The device a user asked for, before checking that it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("device \"{s}\" is not one of cpu, cuda, cuda:N, auto")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Resolve to a real device: `auto` takes the first GPU when there is one.
    pub fn resolve(self) -> Result<Device, ModelError> {
        let gpus = tch::Cuda::device_count() as usize;
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto if gpus > 0 => Ok(Device::Cuda(0)),
            DeviceSpec::Auto => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) if n < gpus => Ok(Device::Cuda(n)),
            DeviceSpec::Cuda(n) => Err(ModelError::Device(format!(
                "cuda:{n} was requested but {gpus} CUDA devices are visible"
            ))),
        }
    }
}

/// f32 on CPU, bf16 on CUDA (never fp16: ICAE slots overflow it).
pub fn default_kind(device: Device) -> Kind {
    match device {
        Device::Cpu => Kind::Float,
        _ => Kind::BFloat16,
    }
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        Kind::Double => "f64",
        _ => "other",
    }
}
