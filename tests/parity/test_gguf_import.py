"""GGUF import: dequantization and un-permutation equal the `gguf` package bit for bit."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file

from conftest import run_icae

HF_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{HF_NAMES[parts[2]]}.weight"
    return f"{HF_NAMES[parts[0]]}.weight"


def reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert script permutes q/k rows; this is its inverse (as in transformers).
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def expected_tensors(path):
    reader = GGUFReader(path)
    field = lambda k: reader.fields[k].contents()  # noqa: E731
    arch = field("general.architecture")
    heads, kv_heads = (
        field(f"{arch}.attention.head_count"),
        field(f"{arch}.attention.head_count_kv"),
    )
    out = {}
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        values = values.reshape([int(d) for d in reversed(t.shape.tolist())])
        if ".attn_q." in t.name:
            values = reverse_permute(values, heads)
        elif ".attn_k." in t.name:
            values = reverse_permute(values, kv_heads)
        out[hf_name(t.name)] = (values, t.tensor_type)
    return out


def assert_bit_identical(imported, expected):
    assert set(imported) == set(expected)
    for name, (want, qtype) in expected.items():
        got = imported[name]
        assert got.dtype == np.float32, name
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (
            f"{name} ({qtype.name}) differs"
        )


def test_default_model_import_is_bit_identical(default_gguf, tmp_path):
    out = tmp_path / "model"
    run_icae("import-gguf", default_gguf, out)
    expected = expected_tensors(default_gguf)
    types = {qtype.name for _, qtype in expected.values()}
    assert {"Q4_1", "Q8_0", "F32"} <= types, types
    assert_bit_identical(load_file(out / "model.safetensors"), expected)


def write_tiny_llama(path, types):
    """A two-layer Llama GGUF whose projection tensors use the given ggml types."""
    rng = np.random.default_rng(0)
    hidden, ffn, heads, kv_heads, vocab, layers = 64, 128, 4, 2, 96, 2
    head_dim = hidden // heads
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    chars = [chr(c) for c in range(ord("a"), ord("a") + 26)] + [
        chr(c) for c in range(ord("A"), ord("A") + 26)
    ]
    tokens = (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        + chars
        + [f"{a}{b}" for a in "abcdefgh" for b in "abcdefgh"][: vocab - 3 - len(chars)]
    )
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(
        [f"{a} {b}" for a in "abcdefgh" for b in "abcdefgh"][: vocab - 3 - len(chars)]
    )
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def add(name, shape, qtype):
        values = rng.standard_normal(shape).astype(np.float32) * 0.5
        if qtype in (GGMLQuantizationType.F32,):
            w.add_tensor(name, values)
        else:
            data = quantize(values, qtype)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)

    cycle = iter(types * 100)
    add("token_embd.weight", (vocab, hidden), next(cycle))
    add("output_norm.weight", (hidden,), GGMLQuantizationType.F32)
    add("output.weight", (vocab, hidden), next(cycle))
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", (hidden,), GGMLQuantizationType.F32)
        add(f"blk.{i}.ffn_norm.weight", (hidden,), GGMLQuantizationType.F32)
        add(f"blk.{i}.attn_q.weight", (heads * head_dim, hidden), next(cycle))
        add(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden), next(cycle))
        add(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden), next(cycle))
        add(f"blk.{i}.attn_output.weight", (hidden, heads * head_dim), next(cycle))
        add(f"blk.{i}.ffn_gate.weight", (ffn, hidden), next(cycle))
        add(f"blk.{i}.ffn_up.weight", (ffn, hidden), next(cycle))
        add(f"blk.{i}.ffn_down.weight", (hidden, ffn), next(cycle))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


SUPPORTED = [
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
]


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_every_supported_type_is_bit_identical(qtype, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path, [qtype])
    run_icae("import-gguf", path, tmp_path / "out")
    expected = expected_tensors(path)
    assert qtype in {t for _, t in expected.values()}
    assert_bit_identical(load_file(tmp_path / "out" / "model.safetensors"), expected)


def test_unsupported_type_is_refused_with_its_name(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path, [GGMLQuantizationType.Q5_0])
    proc = run_icae("import-gguf", path, tmp_path / "out", check=False)
    assert proc.returncode != 0
    assert "Q5_0" in proc.stderr and "token_embd.weight" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists(), "a failed import must not leave a model directory"
