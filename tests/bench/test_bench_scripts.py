"""The benchmark scripts' plumbing, cheaply: how scripts/bench-serve.sh splits its flags,
the HF reference scripts' arguments and documents, and scripts/gpu-check.sh end to end on
the CPU in its dry mode (tiny sizes): every report in its output directory."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts" / "bench"))
import hf_compress  # noqa: E402
import hf_generate  # noqa: E402
import operator_kinds  # noqa: E402
import perf_categories  # noqa: E402


def bash(script, *args, env=None, timeout=3600):
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / script), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_bench_serve_gives_dtype_to_the_services_and_the_rest_to_the_client():
    out = bash(
        "bench-serve.sh",
        "--dtype",
        "bf16",
        "--context-tokens",
        "512,2048",
        "--streams=1,4,8,16",
        "--json",
        env={"ICAE_BENCH_DRY_RUN": "1"},
    )
    services, bench = out.splitlines()
    assert services == "services: --dtype bf16"
    assert bench.endswith("--context-tokens 512,2048 --streams=1,4,8,16 --json")
    assert "dtype" not in bench
    assert bash("bench-serve.sh", "--dtype=f32", env={"ICAE_BENCH_DRY_RUN": "1"}).startswith(
        "services: --dtype f32\n"
    )


def test_hf_references_take_dtype_and_device_and_cut_the_same_windows():
    args = hf_compress.parse_args(["--model", "m", "--adapter", "a", "--ids", "i"])
    assert (args.dtype, args.device) == ("f32", "cpu")
    args = hf_generate.parse_args(["--model", "m", "--standalone", "--dtype", "bf16"])
    assert hf_compress.DTYPES[args.dtype] is hf_compress.torch.bfloat16
    with pytest.raises(SystemExit):
        hf_generate.parse_args(["--model", "m"])  # neither --ids nor --standalone
    ids = list(range(12))
    assert hf_compress.batch_documents(ids, 4, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert hf_generate.prompts(ids, 2, 5) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_gpu_check_dry_run_on_the_cpu(default_gguf, tmp_path):
    out = tmp_path / "out"
    printed = bash(
        "gpu-check.sh",
        *("--device", "cpu", "--dtype", "f32", "--dry-run", "--out", out),
        *("--gguf", default_gguf),
        env={"ICAE_PYTHON": sys.executable},
    )
    forward = json.loads((out / "forward.json").read_text())
    assert (forward["device"], forward["dtype"], forward["hf_dtype"]) == ("cpu", "f32", "f32")
    assert [(r["tokens"], r["batch"]) for r in forward["rows"]] == [(128, 1), (64, 2)]
    assert all(r["speedup_vs_hf"] > 0 for r in forward["rows"])
    decode = json.loads((out / "decode.json").read_text())
    assert decode["dtype"] == "f32" and decode["threads"] >= 1
    assert [r["batch"] for r in decode["rows"]] == [1, 2]
    assert decode["rows"][0]["fraction_of_bandwidth_limit"] > 0
    assert decode["rows"][1]["decode_speedup_vs_hf"] > 0
    # A dry run only collects the parity tests (the suite runs them on the CPU anyway).
    assert "test_real_model_base_logits_match_transformers_bf16" in (out / "parity.log").read_text()
    assert "torch" in (out / "env.txt").read_text()
    assert "forward.json" in printed


def test_bench_refine_times_the_engine_against_the_oracle(model_dir):
    """`icae-bench refine` end to end at tiny sizes: one row per case, with the engine's step
    and forward times and the oracle's step time from scripts/bench/py_refine.py."""
    from conftest import icae_bench_bin

    # fmt: off
    args = [
        "refine", "--model", model_dir, "--adapter", ROOT / "models" / "smollm2-135m-icae",
        "--device", "cpu", "--dtype", "f32", "--lengths", "16", "--batch", "2",
        "--batch-tokens", "16", "--steps", "1", "--repeats", "1",
        "--python", sys.executable, "--oracle-script", ROOT / "scripts/bench/py_refine.py",
        "--json",
    ]
    # fmt: on
    proc = subprocess.run(
        [icae_bench_bin(), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["bench"] == "refine" and report["oracle_threads"] >= 1
    assert [(r["tokens"], r["batch"]) for r in report["rows"]] == [(16, 1), (16, 2)]
    for row in report["rows"]:
        assert row["slots"] == 32
        assert row["step_seconds"] > 0 and row["forward_seconds"] > 0
        assert row["oracle_step_seconds"] > 0
        assert row["speedup_vs_oracle"] == pytest.approx(
            row["oracle_step_seconds"] / row["step_seconds"]
        )


def test_perf_samples_are_grouped_by_kind_of_work(capsys, monkeypatch):
    """scripts/profile.sh's grouping: symbols with spaces and parentheses (C++ templates),
    oneDNN's generated code (perf-PID.map) and the kernel each land in their category, and
    the shares are of all samples."""
    torch_lib = "/venv/lib/python3.11/site-packages/torch/lib"
    lines = [
        "    7f1b9f16417d [unknown] (/tmp/perf-9163.map)",
        "    7f1b9f16417e [unknown] (/tmp/perf-9163.map)",
        f"    7f558941de62 [unknown] ({torch_lib}/libgomp.so.1)",
        "    7f55 c10::function_ref<void (char**, long const*)>::callback_fn<at::native::AVX2::"
        f"VectorizedLoop2d<mul_kernel>>+0x1a ({torch_lib}/libtorch_cpu.so)",
        " ffffffff816df2f3 exc_page_fault ([kernel.kallsyms])",
        "",
    ]
    monkeypatch.setattr(sys, "stdin", iter(line + "\n" for line in lines))
    perf_categories.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "5 samples"
    categories = [re.match(r"^ {0,3}(\d+\.\d%)  (.*)$", line) for line in out[1:]]
    shares = {match[2]: match[1] for match in categories if match}
    assert shares == {
        "matrix products (MKL, oneDNN)": "40.0%",
        "OpenMP fork/join and waiting": "20.0%",
        "elementwise, copies, reductions": "20.0%",
        "memory: allocation, page faults, zeroing": "20.0%",
    }, out


def test_hf_prefill_operators_are_grouped_by_kind_of_work():
    """The profile of transformers' prefill: own times summed per kind; the dispatching
    `scaled_dot_product_attention` and `linear` are bookkeeping, their kernels are not."""
    kinds = operator_kinds.by_kind(
        [
            ("aten::mm", 300.0),
            ("aten::addmm", 100.0),
            ("aten::linear", 5.0),
            ("aten::_scaled_dot_product_flash_attention_for_cpu", 80.0),
            ("aten::scaled_dot_product_attention", 1.0),
            ("aten::mul", 40.0),
            ("aten::silu", 20.0),
        ]
    )
    assert kinds == pytest.approx(
        {
            "matrix products": 400e-6,
            "attention kernel": 80e-6,
            "views and dispatch": 6e-6,
            "elementwise, copies, reductions": 60e-6,
        }
    )


def test_hf_prefill_profile_runs_on_the_default_model(model_dir):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench" / "hf_prefill_profile.py"),
            "--model",
            str(model_dir),
            "--data",
            str(ROOT / "examples" / "pwc_dev.jsonl"),
            "--prompt-tokens",
            "16",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["prompt_tokens"] == 16 and report["dtype"] == "f32"
    assert report["forward_seconds"] > 0 and report["generate_prefill_seconds"] > 0
    kinds = report["profiled_seconds_by_kind"]
    assert kinds["matrix products"] > 0 and kinds["attention kernel"] > 0
    assert report["shared_kernels_seconds"] == pytest.approx(
        kinds["matrix products"] + kinds["attention kernel"]
    )
