//! The HF transformers references of the benchmarks (scripts/bench/*.py) run as workers: one
//! Python process kept alive for the whole run, answering one JSON line per JSON request, so
//! its timings interleave with ours and both see the same machine state.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tch::{Device, Kind};

use icae_core::device::kind_name;

pub struct PyWorker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The first line the worker printed once loaded (`{"ready": true, "threads": N, ...}`).
    pub ready: Value,
    /// The token ids it reads (`--ids`), deleted when the worker goes.
    _ids_file: Option<tempfile::NamedTempFile>,
}

impl PyWorker {
    pub fn start(python: &str, script: &Path, args: Vec<OsString>) -> Result<Self> {
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {python} {}", script.display()))?;
        let stdin = child.stdin.take().context("HF reference stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("HF reference stdout")?);
        let mut worker = PyWorker {
            child,
            stdin,
            stdout,
            ready: Value::Null,
            _ids_file: None,
        };
        worker.ready = worker.read()?;
        Ok(worker)
    }

    /// A reference on the same inputs and in the same setting as our side: `--model`, the
    /// token `ids` (through a file), our dtype and device, then `extra` arguments.
    pub fn start_reference(
        python: &str,
        script: &Path,
        model: &Path,
        ids: &[u32],
        (device, kind): (Device, Kind),
        extra: Vec<OsString>,
    ) -> Result<Self> {
        let ids_file = tempfile::NamedTempFile::new()?;
        std::fs::write(ids_file.path(), serde_json::to_vec(ids)?)?;
        let mut args: Vec<OsString> = vec![
            "--model".into(),
            model.into(),
            "--ids".into(),
            ids_file.path().into(),
            "--dtype".into(),
            kind_name(kind).into(),
            "--device".into(),
            torch_device_name(device).into(),
        ];
        args.extend(extra);
        let mut worker = Self::start(python, script, args)?;
        worker._ids_file = Some(ids_file);
        Ok(worker)
    }

    /// Intra-op threads of the worker's torch.
    pub fn threads(&self) -> u64 {
        self.ready["threads"].as_u64().unwrap_or(0)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the HF reference exited early (its error is above)");
        }
        serde_json::from_str(&line).with_context(|| format!("HF reference said {line:?}"))
    }

    /// Send one request and wait for its answer.
    pub fn ask(&mut self, request: &Value) -> Result<Value> {
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()?;
        self.read()
    }

    /// `ask`, for the usual `{"seconds": ...}` answer.
    pub fn seconds(&mut self, request: &Value) -> Result<f64> {
        self.ask(request)?["seconds"]
            .as_f64()
            .context("HF reference answered without seconds")
    }
}

impl Drop for PyWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The device as torch spells it: `cpu`, `cuda:N`.
pub fn torch_device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        Device::Cpu => "cpu".into(),
    }
}

/// Wait for the device's queued work, so a wall-clock timer measures it (no-op on the CPU).
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_named_as_torch_names_them() {
        assert_eq!(torch_device_name(Device::Cpu), "cpu");
        assert_eq!(torch_device_name(Device::Cuda(1)), "cuda:1");
    }
}
