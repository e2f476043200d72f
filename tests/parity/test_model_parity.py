"""The Rust engine against HF transformers + peft on the real default model.

- base-model logits: max |diff| <= 1e-3 * max |logit|
- slots from a random adapter in the official v2 key layout (non-zero LoRA B), for texts of
  1 to 5 segments: max |diff| <= 1e-3 * max |slot|, computed by an independent Python
  implementation of the official `_compress`;
- greedy tokens of the AUTOENCODE layout agree for 16 steps.
"""

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast

from conftest import run_icae, run_icae_json

MEM_SIZE = 8
RATE = 4
LORA_R = 8
LORA_ALPHA = 32
ARTICLE = (
    "The Franco-Korean Friendship Association was founded in 2005. Its president, a senior civil "
    "servant, was arrested on Monday on suspicion of spying. Prosecutors said the investigation "
    "began in March, when officers of the domestic security agency noticed unusual contacts. The "
    "suspect denies the charges and his lawyer, Mr. Dupont, said 14 documents seized at his "
    "office were public. The case has drawn attention in Paris, Seoul and Pyongyang, where "
    "officials declined to comment. Analysts note that 3 similar cases were opened in Europe "
    "since 2016, and 2 of them ended without charges. "
) * 3


def test_base_logits_match(model_dir, hf_model, tmp_path):
    text = (
        "The capital of France is Paris. "
        "In 1889, 2,000 workers built the Eiffel Tower in 26 months!"
    )
    out = tmp_path / "logits.safetensors"
    run_icae("logits", "--model", model_dir, "--device", "cpu", "--text", text, "--out", out)
    ours = load_file(out)
    with torch.no_grad():
        ref = hf_model(ours["token_ids"].unsqueeze(0)).logits[0]
    diff = (ref - ours["logits"]).abs().max().item()
    assert diff <= 1e-3 * ref.abs().max().item(), diff


@pytest.fixture(scope="module")
def official_adapter(tmp_path_factory, hf_model):
    """A random adapter saved like mistral_7b_pretrained_icae.safetensors: LoRA in bf16 with
    official keys and non-zero B, memory embeddings in f32."""
    gen = torch.Generator().manual_seed(1234)
    cfg = hf_model.config
    hidden = cfg.hidden_size
    kv_dim = cfg.num_key_value_heads * (hidden // cfg.num_attention_heads)
    tensors = {"memory_token_embed.weight": torch.randn(MEM_SIZE + 3, hidden, generator=gen) * 0.15}
    for i in range(cfg.num_hidden_layers):
        for module, out_dim in (("q_proj", hidden), ("v_proj", kv_dim)):
            key = f"icae.base_model.model.model.layers.{i}.self_attn.{module}"
            tensors[f"{key}.lora_A.default.weight"] = (
                torch.randn(LORA_R, hidden, generator=gen) * 0.05
            ).bfloat16()
            tensors[f"{key}.lora_B.default.weight"] = (
                torch.randn(out_dim, LORA_R, generator=gen) * 0.05
            ).bfloat16()
    path = tmp_path_factory.mktemp("adapter") / "random_icae_v2.safetensors"
    save_file(tensors, str(path))
    return path, tensors


@pytest.fixture(scope="module")
def oracle(hf_model, official_adapter):
    """peft LoRA on the HF model, loaded from the official keys by our own mapping."""
    _, tensors = official_adapter
    config = LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        bias="none",
    )
    model = get_peft_model(hf_model, config)
    state = {k[len("icae.") :]: v.float() for k, v in tensors.items() if k.startswith("icae.")}
    missing = model.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    model.eval()
    yield model, tensors["memory_token_embed.weight"].float()
    model.unload()  # leave the shared HF model without LoRA layers for other tests


def oracle_compress(model, memory, ids, k=MEM_SIZE):
    """The official `_compress` (modeling_icae_multi_span.py), written out for a peft model;
    with `k` < MEM_SIZE each segment (MEM_SIZE * RATE tokens, as trained) gets only the first
    k memory tokens."""
    n_seg = math.ceil(len(ids) / (MEM_SIZE * RATE))
    seg_len = math.ceil(len(ids) / n_seg)
    embed = model.get_base_model().model.embed_tokens
    slots = []
    with torch.no_grad():
        for s in range(n_seg):
            seg = torch.tensor([ids[s * seg_len : min((s + 1) * seg_len, len(ids))]])
            x = torch.cat([embed(seg), memory[:k].unsqueeze(0)], dim=1)
            hidden = model(inputs_embeds=x, output_hidden_states=True).hidden_states[-1]
            slots.append(hidden[0, -k:])
    return torch.cat(slots), n_seg


def oracle_greedy(model, embeds, steps):
    """Greedy decoding with LoRA disabled, from input embeddings."""
    out = []
    with torch.no_grad(), model.disable_adapter():
        result = model(inputs_embeds=embeds, use_cache=True)
        for _ in range(steps):
            token = int(result.logits[0, -1].argmax())
            out.append(token)
            if token == 2:
                break
            result = model(
                input_ids=torch.tensor([[token]]),
                past_key_values=result.past_key_values,
                use_cache=True,
            )
    return out


@pytest.mark.parametrize("segments", [1, 2, 3, 4, 5])
def test_slots_and_autoencode_tokens_match(segments, model_dir, official_adapter, oracle, tmp_path):
    path, _ = official_adapter
    # Cut the article to a length that needs exactly `segments` segments.
    capacity = MEM_SIZE * RATE
    target_len = (segments - 1) * capacity + capacity // 2 + 3
    ids = run_icae_json("tokenize", "--model", model_dir, "--text", ARTICLE, "--json")["token_ids"][
        :target_len
    ]
    # Write the text of exactly these ids and re-tokenize it, so both sides see the same tokens.
    tok = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    token_file = tmp_path / "text.txt"
    token_file.write_text(tok.decode(ids))
    ids = run_icae_json("tokenize", "--model", model_dir, "--text-file", token_file, "--json")[
        "token_ids"
    ]
    assert len(ids) in range(target_len - 2, target_len + 3)

    summary = assert_matches_the_oracle(model_dir, path, oracle, ids, token_file, MEM_SIZE)
    assert summary["num_segments"] == segments


def assert_matches_the_oracle(model_dir, adapter, oracle, ids, text_file, slots_per_segment):
    """`icae compress` of `text_file` (whose tokens are `ids`) at `slots_per_segment` gives
    the oracle's slots, and `icae generate` from them the oracle's greedy reconstruction
    tokens; returns the compress summary."""
    model, memory = oracle
    slots_file = text_file.with_suffix(".safetensors")
    adapter_args = ["--adapter", adapter, "--lora-alpha", LORA_ALPHA, "--compression-rate", RATE]
    # fmt: off
    summary = run_icae_json(
        "compress", "--model", model_dir, "--device", "cpu", *adapter_args,
        "--text-file", text_file, "--out", slots_file,
        "--slots-per-segment", slots_per_segment, "--json",
    )
    # fmt: on
    ours = load_file(slots_file)["slots"]
    expected, n_seg = oracle_compress(model, memory, ids, slots_per_segment)
    assert summary["num_segments"] == n_seg
    assert summary["slots_per_segment"] == slots_per_segment
    assert ours.shape == expected.shape == (n_seg * slots_per_segment, model.config.hidden_size)
    diff = (ours - expected).abs().max().item()
    assert diff <= 1e-3 * expected.abs().max().item(), diff

    # fmt: off
    generated = run_icae_json(
        "generate", "--model", model_dir, "--device", "cpu", *adapter_args,
        "--slots", slots_file, "--mode", "autoencode", "--greedy", "--max-new-tokens", 16, "--json",
    )
    # fmt: on
    ae_embed = memory[MEM_SIZE : MEM_SIZE + 1]
    want = oracle_greedy(model, torch.cat([expected, ae_embed]).unsqueeze(0), 16)
    got = generated["token_ids"] + ([2] if generated["finish_reason"] == "eos" else [])
    assert got == want
    return summary


@pytest.mark.parametrize("slots_per_segment", [1, 3])
def test_fewer_slots_per_segment_match(
    slots_per_segment, model_dir, official_adapter, oracle, tmp_path
):
    """`--slots-per-segment k`: segments as long as at the trained rate, each read with the
    first k memory tokens; the decoder reads the shorter slot sets back the same way."""
    path, _ = official_adapter
    text_file = tmp_path / "text.txt"
    text_file.write_text(ARTICLE[:400])
    ids = run_icae_json("tokenize", "--model", model_dir, "--text-file", text_file, "--json")[
        "token_ids"
    ]
    summary = assert_matches_the_oracle(model_dir, path, oracle, ids, text_file, slots_per_segment)
    assert summary["num_segments"] >= 2


def test_more_slots_per_segment_than_memory_tokens_are_refused(
    model_dir, official_adapter, tmp_path
):
    path, _ = official_adapter
    # fmt: off
    result = run_icae(
        "compress", "--model", model_dir, "--device", "cpu", "--adapter", path,
        "--lora-alpha", LORA_ALPHA, "--compression-rate", RATE, "--text", "a short text",
        "--out", tmp_path / "slots.safetensors", "--slots-per-segment", MEM_SIZE + 1,
        check=False,
    )
    # fmt: on
    assert result.returncode != 0
    assert f"slots_per_segment is {MEM_SIZE + 1}" in result.stderr
    assert f"1..={MEM_SIZE}" in result.stderr
    assert not (tmp_path / "slots.safetensors").exists()
