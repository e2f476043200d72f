//! `--device cpu|cuda[:N]|auto` and `--dtype f32|bf16|auto`.

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

/// The precision a user asked for: weights, LoRA, KV cache and activations all run in it.
/// Never fp16: ICAE slots overflow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtypeSpec {
    /// bf16 where the hardware multiplies bf16 natively (CUDA, or a CPU with AMX-BF16 or
    /// AVX512-BF16), f32 elsewhere: on other CPUs bf16 matmuls are emulated and far slower.
    #[default]
    Auto,
    F32,
    Bf16,
}

impl FromStr for DtypeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DtypeSpec::Auto),
            "f32" | "float32" => Ok(DtypeSpec::F32),
            "bf16" | "bfloat16" => Ok(DtypeSpec::Bf16),
            _ => Err(format!("dtype \"{s}\" is not one of f32, bf16, auto")),
        }
    }
}

impl fmt::Display for DtypeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DtypeSpec::Auto => "auto",
            DtypeSpec::F32 => "f32",
            DtypeSpec::Bf16 => "bf16",
        })
    }
}

impl DtypeSpec {
    /// The tensor kind to run in on `device`.
    pub fn resolve(self, device: Device) -> Kind {
        match self {
            DtypeSpec::F32 => Kind::Float,
            DtypeSpec::Bf16 => Kind::BFloat16,
            DtypeSpec::Auto if device != Device::Cpu || cpu_has_native_bf16() => Kind::BFloat16,
            DtypeSpec::Auto => Kind::Float,
        }
    }
}

/// Whether this machine's CPU multiplies bf16 in hardware (Linux: from /proc/cpuinfo).
pub fn cpu_has_native_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| cpuinfo_has_native_bf16(&info))
        .unwrap_or(false)
}

/// AMX-BF16 or AVX512-BF16 in the first processor's `flags` line.
fn cpuinfo_has_native_bf16(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|line| line.starts_with("flags"))
        .and_then(|line| line.split_once(':'))
        .is_some_and(|(_, flags)| {
            flags
                .split_whitespace()
                .any(|flag| flag == "amx_bf16" || flag == "avx512_bf16")
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_names_parse_and_unknown_ones_are_named_in_the_error() {
        assert_eq!("BF16".parse::<DtypeSpec>(), Ok(DtypeSpec::Bf16));
        assert_eq!("float32".parse::<DtypeSpec>(), Ok(DtypeSpec::F32));
        assert_eq!("auto".parse::<DtypeSpec>(), Ok(DtypeSpec::Auto));
        let err = "fp16".parse::<DtypeSpec>().unwrap_err();
        assert!(
            err.contains("\"fp16\"") && err.contains("f32, bf16, auto"),
            "{err}"
        );
    }

    #[test]
    fn explicit_dtypes_hold_on_any_device_and_auto_is_bf16_on_cuda() {
        assert_eq!(DtypeSpec::F32.resolve(Device::Cuda(0)), Kind::Float);
        assert_eq!(DtypeSpec::Bf16.resolve(Device::Cpu), Kind::BFloat16);
        assert_eq!(DtypeSpec::Auto.resolve(Device::Cuda(0)), Kind::BFloat16);
        let on_cpu = DtypeSpec::Auto.resolve(Device::Cpu);
        let expected = if cpu_has_native_bf16() {
            Kind::BFloat16
        } else {
            Kind::Float
        };
        assert_eq!(on_cpu, expected);
    }

    #[test]
    fn native_bf16_is_read_from_the_cpu_flags() {
        let amx = "processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n";
        let avx512 = "flags\t: avx512f avx512_bf16\n";
        let avx2 = "flags\t: fpu sse2 avx2 fma\nbugs\t: amx_bf16\n";
        assert!(cpuinfo_has_native_bf16(amx));
        assert!(cpuinfo_has_native_bf16(avx512));
        assert!(!cpuinfo_has_native_bf16(avx2));
        assert!(!cpuinfo_has_native_bf16(""));
    }
}
