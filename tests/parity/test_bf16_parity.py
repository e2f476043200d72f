"""`--dtype bf16` against the oracle: the Rust engine in bf16 against HF transformers
+ peft loaded in torch.bfloat16 on the same inputs — base logits, slots for 1 to 5 segments,
greedy tokens — on a tiny random Llama (fast), plus base logits of the real default model.
The CPU bf16 path runs the same code as CUDA bf16.

Tolerances, from bf16's precision. bf16 keeps 8 significant bits, so rounding a value x to
bf16 changes it by at most u·|x| with the unit roundoff u = 2^-8 ≈ 0.0039. Two criteria:

1. Against the bf16 oracle: |ours - hf_bf16| <= 2·(depth + 1)·u·max|ref|. Each of the `depth`
   decoder layers rounds its residual update (and RMSNorm keeps the stream's scale, so errors
   are not amplified layer over layer); the final norm and the LM head round once more. One
   bf16 implementation is then within (depth + 1)·u·max|ref| of the exact result, and two
   that round at different points (fused kernels, accumulation order, f32 accumulators) are
   within twice that of each other. `depth` is the number of layers the compared values went
   through: L for logits and slots, 2L for tokens decoded from slots (encoder, then decoder).
   Measured on the tiny model (L = 4): logits and slots differ by 3-4·u·max|ref| (bound 10),
   as much as HF-bf16 and our bf16 each differ from f32.
2. Against the f32 reference (HF + peft in f32): our bf16 error is of the same size as
   HF-bf16's own, max|ours - f32| <= 2·max|hf_bf16 - f32| + u·max|f32| (the last term: one
   extra rounding of the output). This is the sharp check; criterion 1 bounds it a priori.

Greedy tokens are compared only while the bf16 reference's top-2 logit margin exceeds twice
the logit tolerance of criterion 1 (each of the two logits may be off by it in opposite
directions); from the first step where it does not, either token is a correct bf16 answer
and the comparison stops there. A random model's logits over 49k tokens are nearly flat
(top-2 margins of 1-10% of max|logit|, against 2·2·(2L + 1)·u = 14% here), so on the tiny
model that comparison usually stops at the first step. Every step is then checked another
way: the reference, fed our slots and our tokens so far, must rank our token within twice the
logit tolerance (depth L: the decoder alone) of its best one — a near-greedy choice at bf16
precision, which is the greedy one wherever the margin is decisive.
"""

import copy
import math
import os
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import run_icae, run_icae_json

# Where our engine runs (scripts/gpu-check.sh sets its --device); the oracle stays on the CPU, the
# tolerances already allow for two bf16 implementations that round differently.
DEVICE = os.environ.get("ICAE_TEST_DEVICE", "cpu")
U = 2.0**-8  # bf16 unit roundoff
LAYERS = 4
MEM_SIZE, RATE, LORA_R, LORA_ALPHA = 8, 4, 8, 32
STEPS = 16
ARTICLE = (
    "The Franco-Korean Friendship Association was founded in 2005. Its president, a senior civil "
    "servant, was arrested on Monday on suspicion of spying. Prosecutors said the investigation "
    "began in March, when officers of the domestic security agency noticed unusual contacts. The "
    "suspect denies the charges and his lawyer, Mr. Dupont, said 14 documents seized at his "
    "office were public. Analysts note that 3 similar cases were opened in Europe since 2016. "
)


def bf16_tolerance(ref: torch.Tensor, depth: int) -> float:
    """Criterion 1 of the module docstring."""
    return 2 * (depth + 1) * U * ref.abs().max().item()


def assert_same_error_size(ours, hf_bf16, f32):
    """Criterion 2 of the module docstring."""
    ours_err = (ours - f32).abs().max().item()
    hf_err = (hf_bf16 - f32).abs().max().item()
    bound = 2 * hf_err + U * f32.abs().max().item()
    assert ours_err <= bound, f"bf16 error vs f32: ours {ours_err}, transformers {hf_err}"


@pytest.fixture(scope="module")
def tiny(model_dir, tmp_path_factory):
    """A 4-layer random Llama with SmolLM2's tokenizer, saved in f32; and its bf16 copy."""
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the default init make differences visible
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(4.0)
    path = tmp_path_factory.mktemp("tiny-bf16") / "model"
    model.save_pretrained(path, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / f, path / f)
    return path, model, copy.deepcopy(model).to(torch.bfloat16)


def test_base_logits_match_transformers_bf16(tiny, tmp_path):
    path, f32_model, bf16_model = tiny
    out = tmp_path / "logits.safetensors"
    # fmt: off
    run_icae("logits", "--model", path, "--device", DEVICE, "--dtype", "bf16",
             "--text", ARTICLE, "--out", out)
    # fmt: on
    ours = load_file(out)
    # Widened to f32 after a bf16 LM head: every value is a bf16 number.
    assert ours["logits"].equal(ours["logits"].bfloat16().float()), "not from the bf16 model"
    ids = ours["token_ids"].unsqueeze(0)
    with torch.no_grad():
        ref_f32 = f32_model(ids).logits[0]
        ref_bf16 = bf16_model(ids).logits[0].float()
    logits = ours["logits"].float()
    diff = (logits - ref_bf16).abs().max().item()
    assert diff <= bf16_tolerance(ref_bf16, LAYERS), diff
    assert_same_error_size(logits, ref_bf16, ref_f32)


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    """A random adapter in the official v2 key layout (LoRA in bf16 with non-zero B, memory
    embeddings in f32) and the peft oracles in f32 and in bf16 (LoRA kept in bf16 too)."""
    _, f32_model, bf16_model = tiny
    gen = torch.Generator().manual_seed(4321)
    cfg = f32_model.config
    hidden = cfg.hidden_size
    kv_dim = cfg.num_key_value_heads * (hidden // cfg.num_attention_heads)
    tensors = {"memory_token_embed.weight": torch.randn(MEM_SIZE + 3, hidden, generator=gen) * 0.5}
    for i in range(cfg.num_hidden_layers):
        for module, out_dim in (("q_proj", hidden), ("v_proj", kv_dim)):
            key = f"icae.base_model.model.model.layers.{i}.self_attn.{module}"
            for half, shape in (("A", (LORA_R, hidden)), ("B", (out_dim, LORA_R))):
                value = torch.randn(*shape, generator=gen) * 0.1
                tensors[f"{key}.lora_{half}.default.weight"] = value.bfloat16()
    path = tmp_path_factory.mktemp("adapter-bf16") / "random_icae_v2.safetensors"
    save_file(tensors, str(path))
    lora = LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=["q_proj", "v_proj"], lora_dropout=0.0
    )
    oracles = {}
    for dtype, base in ((torch.float32, f32_model), (torch.bfloat16, bf16_model)):
        model = get_peft_model(copy.deepcopy(base), lora, autocast_adapter_dtype=False).eval()
        lora_keys = [k for k in tensors if k.startswith("icae.")]
        state = {k[len("icae.") :]: tensors[k].to(dtype) for k in lora_keys}
        assert not model.load_state_dict(state, strict=False).unexpected_keys
        memory = tensors["memory_token_embed.weight"].to(dtype)
        oracles[dtype] = (model, memory)
    return path, oracles


def oracle_compress(model, memory, ids):
    """The official `_compress` (modeling_icae_multi_span.py), written out for a peft model."""
    n_seg = math.ceil(len(ids) / (MEM_SIZE * RATE))
    seg_len = math.ceil(len(ids) / n_seg)
    embed = model.get_base_model().model.embed_tokens
    slots = []
    with torch.no_grad():
        for s in range(n_seg):
            seg = torch.tensor([ids[s * seg_len : (s + 1) * seg_len]])
            x = torch.cat([embed(seg), memory[:MEM_SIZE].unsqueeze(0)], dim=1)
            hidden = model(inputs_embeds=x, output_hidden_states=True).hidden_states[-1]
            slots.append(hidden[0, -MEM_SIZE:])
    return torch.cat(slots)


def oracle_greedy(model, embeds, steps):
    """Greedy decoding with LoRA disabled, from input embeddings: tokens and their logits."""
    tokens, logits = [], []
    with torch.no_grad(), model.disable_adapter():
        result = model(inputs_embeds=embeds, use_cache=True)
        for _ in range(steps):
            step = result.logits[0, -1].float()
            logits.append(step)
            tokens.append(int(step.argmax()))
            result = model(
                input_ids=torch.tensor([tokens[-1:]]),
                past_key_values=result.past_key_values,
                use_cache=True,
            )
    return tokens, logits


def comparable_steps(logits, depth):
    """Steps before the first whose top-2 margin is within twice the logit tolerance."""
    for step, row in enumerate(logits):
        top = row.topk(2).values
        if (top[0] - top[1]).item() <= 2 * bf16_tolerance(row, depth):
            return step
    return len(logits)


def document_ids(path, segments, tmp_path):
    """A text of the article that needs exactly `segments` segments, and its token ids."""
    ids = run_icae_json("tokenize", "--model", path, "--text", ARTICLE * 3, "--json")["token_ids"]
    capacity = MEM_SIZE * RATE
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    text_file = tmp_path / "text.txt"
    text_file.write_text(tok.decode(ids[: (segments - 1) * capacity + capacity // 2 + 3]))
    ids = run_icae_json("tokenize", "--model", path, "--text-file", text_file, "--json")
    return text_file, ids["token_ids"]


@pytest.mark.parametrize("segments", [1, 2, 3, 4, 5])
def test_slots_and_greedy_tokens_match_transformers_bf16(segments, tiny, adapter, tmp_path):
    path, _, _ = tiny
    adapter_path, oracles = adapter
    text_file, ids = document_ids(path, segments, tmp_path)
    slots_file = tmp_path / "slots.safetensors"
    common = ["--model", path, "--device", DEVICE, "--dtype", "bf16", "--adapter", adapter_path]
    common += ["--lora-alpha", LORA_ALPHA, "--compression-rate", RATE]
    summary = run_icae_json(
        "compress", *common, "--text-file", text_file, "--out", slots_file, "--json"
    )
    assert summary["num_segments"] == segments
    stored = load_file(slots_file)["slots"]
    assert stored.dtype == torch.float32, "slots are stored in f32 unless --slot-dtype bf16"
    assert stored.equal(stored.bfloat16().float()), "the slots must come from the bf16 model"

    model, memory = oracles[torch.bfloat16]
    ref_bf16 = oracle_compress(model, memory, ids).float()
    ref_f32 = oracle_compress(*oracles[torch.float32], ids)
    assert stored.shape == ref_bf16.shape == (segments * MEM_SIZE, model.config.hidden_size)
    diff = (stored - ref_bf16).abs().max().item()
    assert diff <= bf16_tolerance(ref_bf16, LAYERS), diff
    assert_same_error_size(stored, ref_bf16, ref_f32)

    # fmt: off
    generated = run_icae_json(
        "generate", *common, "--slots", slots_file, "--mode", "autoencode", "--greedy",
        "--max-new-tokens", STEPS, "--json",
    )
    # fmt: on
    ae = memory[MEM_SIZE : MEM_SIZE + 1]
    embeds = torch.cat([ref_bf16.bfloat16(), ae]).unsqueeze(0)
    want, logits = oracle_greedy(model, embeds, STEPS)
    compared = comparable_steps(logits, 2 * LAYERS)
    ours = generated["token_ids"]
    assert ours[:compared] == want[:compared], f"compared {compared} steps"

    # Every step: the reference on our slots and our prefix ranks our token near its best.
    assert len(ours) == STEPS
    tokens = torch.tensor([ours])
    with torch.no_grad(), model.disable_adapter():
        prefix = model.get_base_model().model.embed_tokens(tokens[:, :-1])
        x = torch.cat([stored.bfloat16(), ae]).unsqueeze(0)
        forced = model(inputs_embeds=torch.cat([x, prefix], dim=1)).logits[0, x.shape[1] - 1 :]
    for step, row in enumerate(forced.float()):
        gap = (row.max() - row[ours[step]]).item()
        assert gap <= 2 * bf16_tolerance(row, LAYERS), (step, gap, row.abs().max().item())


def test_real_model_base_logits_match_transformers_bf16(model_dir, hf_model, tmp_path):
    """SmolLM2-135M (30 layers): a short text, the depth-scaled bound and the f32 one."""
    text = "The capital of France is Paris. In 1889, 2,000 workers built the Eiffel Tower."
    out = tmp_path / "logits.safetensors"
    # fmt: off
    run_icae("logits", "--model", model_dir, "--device", DEVICE, "--dtype", "bf16",
             "--text", text, "--out", out)
    # fmt: on
    ours = load_file(out)
    assert ours["logits"].equal(ours["logits"].bfloat16().float())
    ids = ours["token_ids"].unsqueeze(0)
    with torch.no_grad():
        ref_f32 = hf_model(ids).logits[0]
        ref_bf16 = copy.deepcopy(hf_model).to(torch.bfloat16)(ids).logits[0].float()
    logits = ours["logits"].float()
    diff = (logits - ref_bf16).abs().max().item()
    assert diff <= bf16_tolerance(ref_bf16, hf_model.config.num_hidden_layers), diff
    assert_same_error_size(logits, ref_bf16, ref_f32)
