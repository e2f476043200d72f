"""The slot projector: a trainable linear map on the slots, recorded in
icae_config.json and stored as `slot_projector.weight` / `.bias`. The Python model, an
independent transformers + peft oracle and the Rust engine give the same projected slots and
greedy tokens; adapters without it are written exactly as before."""

import json
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import run_icae, run_icae_json
from icae_train.adapter_io import load_adapter, save_adapter
from icae_train.model import ICAE, IcaeConfig

MEM_SIZE, RATE, LORA_R, LORA_ALPHA = 8, 4, 4, 32.0
TEXT = (
    "The projector maps each memory slot to the scale of token embeddings before the frozen "
    "decoder reads it. Without it, slots leave the final norm fifteen times larger. "
) * 3  # about 70 tokens: 3 segments of at most 32


def make_model(model_dir, projector: bool) -> ICAE:
    torch.manual_seed(0)
    config = IcaeConfig(
        mem_size=MEM_SIZE,
        compression_rate=RATE,
        lora_r=LORA_R,
        lora_alpha=LORA_ALPHA,
        slot_projector=projector,
    )
    model = ICAE(str(model_dir), config)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-zero LoRA B, and a projector far from its initial identity
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        if projector:
            weight = model.slot_projector.weight
            weight.add_(torch.randn(weight.shape, generator=gen) * 0.01)
            model.slot_projector.bias.copy_(torch.randn(weight.shape[0], generator=gen) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def projector_adapter(model_dir, tmp_path_factory):
    model = make_model(model_dir, projector=True)
    out = tmp_path_factory.mktemp("projector") / "adapter"
    save_adapter(model, model_dir, out, AutoTokenizer.from_pretrained(str(model_dir)), "test")
    return model, out


def test_initial_projector_is_a_scaled_identity_at_the_embedding_scale(model_dir):
    model = ICAE(str(model_dir), IcaeConfig(mem_size=MEM_SIZE, lora_r=LORA_R, slot_projector=True))
    base = model.icae.get_base_model()
    weight, bias = model.slot_projector.weight, model.slot_projector.bias
    scale = weight[0, 0].item()
    assert torch.equal(weight, torch.eye(weight.shape[0]) * scale) and not bias.any()
    embed_rms = base.get_input_embeddings().weight.pow(2).mean().sqrt().item()
    ids = AutoTokenizer.from_pretrained(str(model_dir)).encode(TEXT, add_special_tokens=False)
    with torch.no_grad():
        slots = model.compress(ids)
    # Measured on SmolLM2: raw slots have RMS ~2, token embeddings ~0.13.
    assert 0.7 * embed_rms < slots.pow(2).mean().sqrt().item() < 1.5 * embed_rms


def test_adapter_files_record_the_projector_only_when_present(
    model_dir, projector_adapter, tmp_path
):
    model, out = projector_adapter
    tensors = load_file(str(out / "adapter.safetensors"))
    hidden = model.icae.config.hidden_size
    assert tensors["slot_projector.weight"].shape == (hidden, hidden)
    assert tensors["slot_projector.bias"].dtype == torch.float32
    assert json.loads((out / "icae_config.json").read_text())["slot_projector"] is True
    loaded = load_adapter(model_dir, out)
    assert torch.equal(loaded.slot_projector.weight, model.slot_projector.weight)

    plain = tmp_path / "plain"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    save_adapter(make_model(model_dir, projector=False), model_dir, plain, tokenizer, "test")
    assert not any("slot_projector" in k for k in load_file(str(plain / "adapter.safetensors")))
    assert "slot_projector" not in json.loads((plain / "icae_config.json").read_text())
    assert load_adapter(model_dir, plain).slot_projector is None


def oracle_slots(model_dir, adapter_dir, ids) -> torch.Tensor:
    """Projected slots from the saved files alone: a fresh HF model + peft LoRA from the
    official keys, the official `_compress` written out, then `x @ W^T + b`."""
    tensors = load_file(str(adapter_dir / "adapter.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    lora = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(base, lora).eval()
    state = {k[len("icae.") :]: v for k, v in tensors.items() if k.startswith("icae.")}
    assert not peft_model.load_state_dict(state, strict=False).unexpected_keys
    memory = tensors["memory_token_embed.weight"][:MEM_SIZE]
    n_seg = math.ceil(len(ids) / (MEM_SIZE * RATE))
    seg_len = math.ceil(len(ids) / n_seg)
    slots = []
    with torch.no_grad():
        for s in range(n_seg):
            seg = torch.tensor([ids[s * seg_len : (s + 1) * seg_len]])
            x = torch.cat([base.get_input_embeddings()(seg), memory.unsqueeze(0)], dim=1)
            hidden = peft_model(inputs_embeds=x, output_hidden_states=True).hidden_states[-1]
            slots.append(hidden[0, -MEM_SIZE:])
    raw = torch.cat(slots)
    return raw @ tensors["slot_projector.weight"].T + tensors["slot_projector.bias"]


def test_python_model_oracle_and_rust_engine_agree(model_dir, projector_adapter, tmp_path):
    model, adapter = projector_adapter
    ids = AutoTokenizer.from_pretrained(str(model_dir)).encode(TEXT, add_special_tokens=False)
    with torch.no_grad():
        ours = model.compress(ids)
    oracle = oracle_slots(model_dir, adapter, ids)
    tolerance = 1e-3 * oracle.abs().max().item()
    assert ours.shape == oracle.shape == (3 * MEM_SIZE, model.icae.config.hidden_size)
    assert (ours - oracle).abs().max().item() <= tolerance

    text_file, slots_file = tmp_path / "text.txt", tmp_path / "slots.safetensors"
    text_file.write_text(TEXT)
    # fmt: off
    run_icae(
        "compress", "--model", model_dir, "--adapter", adapter, "--device", "cpu",
        "--text-file", text_file, "--out", slots_file,
    )
    # fmt: on
    rust = load_file(str(slots_file))["slots"]
    assert (rust - oracle).abs().max().item() <= tolerance
    # fmt: off
    generated = run_icae_json(
        "generate", "--model", model_dir, "--adapter", adapter, "--device", "cpu",
        "--slots", slots_file, "--mode", "autoencode", "--greedy", "--max-new-tokens", 16, "--json",
    )
    # fmt: on
    assert generated["token_ids"] == model.greedy(model.ae_layout(ours), 16)


def test_icae_train_trains_and_exports_the_projector(model_dir, tmp_path):
    from test_training import pretrain, write_corpus

    corpus, run = tmp_path / "corpus", tmp_path / "run"
    write_corpus(corpus)
    pretrain(model_dir, corpus, run, "--slot-projector", "--projector-lr", "1e-2")
    adapter = run / "adapter"
    assert json.loads((adapter / "icae_config.json").read_text())["slot_projector"] is True
    weight = load_file(str(adapter / "adapter.safetensors"))["slot_projector.weight"]
    initial = torch.eye(weight.shape[0]) * weight.diagonal().mean()
    assert (weight - initial).abs().max() > 1e-3, "training must move the projector"
    info = run_icae_json(
        "info", "--model", model_dir, "--adapter", adapter, "--device", "cpu", "--json"
    )
    assert info["adapter"]["mem_size"] == 8
