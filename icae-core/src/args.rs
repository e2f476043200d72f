//! Command-line arguments shared by the `icae` CLI and both services (behind the `clap`
//! feature, so the engine itself does not depend on clap).

use std::path::PathBuf;

use clap::Args;

use crate::adapter::{DEFAULT_COMPRESSION_RATE, DEFAULT_LORA_ALPHA};
use crate::cpu_quota::cgroup_cpu_limit;
use crate::{DeviceSpec, DtypeSpec, LoadOptions};

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// HF-layout model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, env = "ICAE_MODEL")]
    pub model: PathBuf,
    /// Where to run the model: cpu, cuda, cuda:N or auto (first GPU if any).
    #[arg(long, env = "ICAE_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// Precision of weights, LoRA, KV cache and activations: f32, bf16 or auto (bf16 on
    /// CUDA and on CPUs with AMX-BF16 or AVX512-BF16, f32 elsewhere).
    #[arg(long, env = "ICAE_DTYPE", default_value = "auto")]
    pub dtype: DtypeSpec,
    /// libtorch's intra-op CPU threads. 0: the container's CPU limit (its cgroup quota,
    /// rounded up) when it has one, else libtorch's default (one per core of the machine):
    /// more threads than CPUs only contend.
    #[arg(long, env = "ICAE_THREADS", default_value_t = 0)]
    pub threads: usize,
}

impl ModelArgs {
    /// Size libtorch's thread pool (process-wide) as --threads says; returns the threads it
    /// has and why, for the log.
    pub fn apply_threads(&self) -> (usize, &'static str) {
        let (threads, source) = match self.threads {
            0 => match cgroup_cpu_limit() {
                Some(limit) => (limit, "the container's CPU limit"),
                None => return (tch::get_num_threads() as usize, "libtorch's default"),
            },
            n => (n, "--threads"),
        };
        tch::set_num_threads(threads.min(i32::MAX as usize) as i32);
        (threads, source)
    }
}

#[derive(Debug, Clone, Args)]
pub struct AdapterArgs {
    /// Adapter directory (adapter.safetensors + icae_config.json) or an official ICAE v2
    /// .safetensors file. A decoder needs the same adapter as its encoder (for the special
    /// tokens and the fingerprint).
    #[arg(long, env = "ICAE_ADAPTER")]
    pub adapter: PathBuf,
    /// LoRA alpha for official adapter files (adapter directories record their own).
    #[arg(long, env = "ICAE_LORA_ALPHA", default_value_t = DEFAULT_LORA_ALPHA)]
    pub lora_alpha: f64,
    /// Mean compression rate for official adapter files (adapter directories record their own).
    #[arg(long, env = "ICAE_COMPRESSION_RATE", default_value_t = DEFAULT_COMPRESSION_RATE)]
    pub compression_rate: usize,
}

impl AdapterArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            lora_alpha: self.lora_alpha,
            compression_rate: self.compression_rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        model: ModelArgs,
    }

    #[test]
    fn threads_set_libtorchs_pool_and_zero_follows_the_cpu_limit() {
        let default = tch::get_num_threads();
        let auto = Command::parse_from(["x", "--model", "m"]).model;
        assert_eq!(auto.threads, 0);
        let (threads, source) = auto.apply_threads();
        match cgroup_cpu_limit() {
            Some(limit) => assert_eq!((threads, source), (limit, "the container's CPU limit")),
            None => assert_eq!((threads, source), (default as usize, "libtorch's default")),
        }
        assert_eq!(tch::get_num_threads() as usize, threads);
        let given = Command::parse_from(["x", "--model", "m", "--threads", "1"]).model;
        assert_eq!(given.apply_threads(), (1, "--threads"));
        assert_eq!(tch::get_num_threads(), 1);
        tch::set_num_threads(default);
    }
}
