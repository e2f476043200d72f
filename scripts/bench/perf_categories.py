"""Group a `perf report` of an icae-bench run by kind of work: where does a CPU forward spend
its time? Reads `perf script -F ip,sym,dso` (one line per sample) on stdin and prints each
category's share of the samples, then the heaviest symbols of each.

Used by scripts/profile.sh; the categories are by symbol and library name, so they hold for
the libtorch (MKL, oneDNN, libgomp) that the venv's PyTorch ships."""

import re
import sys
from collections import defaultdict

# First match wins; patterns are searched in "library symbol".
CATEGORIES = [
    ("matrix products (MKL, oneDNN)", r"mkl|gemm|dnnl|brg|amx|avx512_core|jit|\[JIT\]|libiomp"),
    ("attention kernels", r"flash_attention|scaled_dot_product|softmax"),
    ("OpenMP fork/join and waiting", r"libgomp|GOMP_|omp_"),
    (
        "memory: allocation, page faults, zeroing",
        r"malloc|_int_free|free\b|cfree|page_fault|clear_page|"
        r"memcg|pte|mmap|munmap|madvise|lru|folio|alloc_pages|rmqueue|zap_",
    ),
    (
        "elementwise, copies, reductions",
        r"VectorizedLoop|vectorized_loop|copy_kernel|fill_kernel|"
        r"memmove|memcpy|memset|reduce|cat_serial|index_|gather|scatter|embedding|masked_fill|"
        r"Sleef|silu|rsqrt|pow_|mul_kernel|add_kernel|cpu_kernel|loop_2d|serial_for_each|invoke_parallel",
    ),
    ("libtorch dispatch, autograd and tensor bookkeeping", r"libtorch|libc10|c10::|at::|torch::"),
    ("our code and its libraries (Rust)", r"icae|tokio|tch::|torch_sys|sha2|bench"),
    ("kernel (other)", r"\[kernel|\[k\]"),
]
# "    7f558941de62 symbol+0x12 (/path/to/library.so)"; JIT code is in "/tmp/perf-PID.map".
SAMPLE = re.compile(r"^\s*[0-9a-f]+\s+(.*)\s+\(([^()]*)\)\s*$")


def main() -> None:
    totals: dict[str, int] = defaultdict(int)
    symbols: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    samples = 0
    for raw in sys.stdin:
        match = SAMPLE.match(raw)
        if not match:
            continue
        symbol, library = match.groups()
        library = library.rsplit("/", 1)[-1]
        if re.fullmatch(r"perf-\d+\.map", library):  # code generated at run time: oneDNN's
            library, symbol = "[JIT]", "oneDNN kernels generated at run time"
        symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol)
        text = f"{library} {symbol}"
        name = next((n for n, p in CATEGORIES if re.search(p, text)), "other")
        totals[name] += 1
        symbols[name][f"{library}: {symbol[:110]}"] += 1
        samples += 1
    print(f"{samples} samples")
    for name, count in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{100 * count / samples:6.1f}%  {name}")
        heaviest = sorted(symbols[name].items(), key=lambda kv: -kv[1])[:3]
        for symbol, part in heaviest:
            print(f"          {100 * part / samples:5.1f}%  {symbol}")


if __name__ == "__main__":
    main()
