"""The overfit check: the training path must memorise one fixed batch. 8 short
texts, each compressed 2x into 4 slots, must reach teacher-forced AE token accuracy >= 0.95
within a bounded number of steps. CI-sized: a tiny randomly initialised Llama built with
transformers (the real 135M model takes minutes per step on the CI CPU; `icae-train overfit`
is the longer check on it, numbers in docs/training.md). The decoder stays frozen and
random, so only the encoder path (LoRA, memory tokens, slot projector) can learn."""

import random

import pytest
import torch

from icae_train.evaluate import teacher_forced_eval
from icae_train.model import ICAE, IcaeConfig, Objective
from icae_train.overfit import OverfitConfig, overfit

TEXTS, TEXT_TOKENS, MEM_SIZE, RATE = 8, 8, 4, 2
VOCAB = 256  # the vocabulary of tiny_dir (tests/conftest.py)
# Measured: 0.71 after 50 steps, 0.958 after 130 (scripted run, same seeds); the bound
# leaves room for variance across torch builds.
MAX_STEPS, LR, PROJECTOR_LR = 200, 1e-3, 1e-2
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def texts():
    rng = random.Random(0)
    return [[rng.randrange(2, VOCAB) for _ in range(TEXT_TOKENS)] for _ in range(TEXTS)]


def test_a_fixed_batch_is_memorised(tiny_dir):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared CPU
    config = IcaeConfig(
        mem_size=MEM_SIZE,
        compression_rate=RATE,
        lora_r=8,
        target_modules=ALL_LINEAR,
        slot_projector=True,
    )
    model = ICAE(str(tiny_dir), config)
    cfg = OverfitConfig(
        max_steps=MAX_STEPS, lr=LR, memory_lr=PROJECTOR_LR, projector_lr=PROJECTOR_LR
    )
    try:
        history = overfit(model, texts(), cfg)
    finally:
        torch.set_num_threads(threads)
    first, last = history[0], history[-1]
    assert first["accuracy"] < 0.1, "the check must start far from its target"
    assert last["accuracy"] >= 0.95, (last, history[::10])
    assert last["loss"] < first["loss"] / 4


def test_a_batch_scores_like_its_texts_one_by_one(tiny_dir):
    """The batched AE path (one encoder and one decoder forward for equal-length texts)
    gives the per-text path's numbers: loss as the mean of the texts' means, same argmax."""
    torch.manual_seed(0)
    config = IcaeConfig(mem_size=MEM_SIZE, compression_rate=RATE, lora_r=8, slot_projector=True)
    model = ICAE(str(tiny_dir), config)
    batch = texts()[:4]
    loss, correct, total = model.autoencode_batch_scores(batch)
    one_by_one = [model.autoencode_scores(ids) for ids in batch]
    assert total == sum(n for _, _, n in one_by_one) == 4 * (TEXT_TOKENS + 1)
    assert correct == sum(right for _, right, _ in one_by_one)
    mean = sum(loss_i.item() for loss_i, _, _ in one_by_one) / len(batch)
    assert loss.item() == pytest.approx(mean, rel=1e-5)
    with pytest.raises(ValueError, match=r"one length .* lengths \[7, 8\]"):
        model.autoencode_batch_scores([[5] * TEXT_TOKENS, [5] * (TEXT_TOKENS - 1)])


def test_the_first_target_can_weigh_more(tiny_dir):
    """`first_target_weight` w: each text's first target (read at the [AE] position) counts
    w times in the mean loss, every other target once; accuracy is unchanged."""
    torch.manual_seed(0)
    config = IcaeConfig(mem_size=MEM_SIZE, compression_rate=RATE, lora_r=8, slot_projector=True)
    model = ICAE(str(tiny_dir), config)
    batch = texts()[:4]
    per_target = []
    for ids in batch:
        predicted, targets = model._predictions(
            model.ae_layout(model.compress(ids)), ids + [model.eos_ids[0]]
        )
        per_target.append(torch.nn.functional.cross_entropy(predicted, targets, reduction="none"))
    weight = 8.0
    weighted = sum(weight * t[0] + t[1:].sum() for t in per_target)
    expected = weighted.item() / (len(batch) * (weight + TEXT_TOKENS))
    loss, correct, _ = model.autoencode_batch_scores(batch, first_target_weight=weight)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    plain, plain_correct, _ = model.autoencode_batch_scores(batch)
    assert correct == plain_correct and loss.item() != pytest.approx(plain.item(), rel=1e-3)


def test_a_batch_of_whole_segments_scores_like_its_texts_one_by_one(tiny_dir):
    """Texts of three whole segments each: the batched path cuts them as `compress` does (its
    slots are each text's own, segment after segment) and gives the per-text numbers.
    A length whose segments would differ in length is refused."""
    torch.manual_seed(0)
    config = IcaeConfig(mem_size=MEM_SIZE, compression_rate=RATE, lora_r=8, slot_projector=True)
    model = ICAE(str(tiny_dir), config)
    with torch.no_grad():  # a LoRA that changes the encoder, so segments are not all alike
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    flat = [t for text in texts() for t in text]
    batch = [flat[i : i + 3 * TEXT_TOKENS] for i in (0, 3 * TEXT_TOKENS)]
    with torch.no_grad():
        _, slots = model.batch_slots(batch)
        assert slots.shape == (2, 3 * MEM_SIZE, model.icae.config.hidden_size)
        for text, batched in zip(batch, slots, strict=True):
            torch.testing.assert_close(batched, model.compress(text), rtol=1e-5, atol=1e-5)
        loss, correct, total = model.autoencode_batch_scores(batch)
        one_by_one = [model.autoencode_scores(ids) for ids in batch]
    assert total == 2 * (3 * TEXT_TOKENS + 1)
    assert correct == sum(right for _, right, _ in one_by_one)
    mean = sum(loss_i.item() for loss_i, _, _ in one_by_one) / len(batch)
    assert loss.item() == pytest.approx(mean, rel=1e-5)
    # 9 tokens are two segments of 5 and 4 (`compress`'s cut): not one batched shape.
    with pytest.raises(ValueError, match=r"segments of one length .* lengths \[9\]"):
        model.batch_slots([[5] * (TEXT_TOKENS + 1)])


def test_the_batched_losses_are_the_official_full_forwards(tiny_dir):
    """The AE and LM losses written out as the official code computes them, from the HF
    model alone: the encoder's full forward with LoRA on (its final hidden states at the
    memory positions), the decoder's full logits with the adapter off, and logits[:-1]
    against labels[1:] with -100 on the prompt. The model skips what the loss does not need
    (the encoder's LM head, the decoder's logits at the slots): the numbers must not move."""
    torch.manual_seed(0)
    config = IcaeConfig(mem_size=MEM_SIZE, compression_rate=RATE, lora_r=8, slot_projector=True)
    model = ICAE(str(tiny_dir), config)
    with torch.no_grad():  # LoRA that changes the encoder, so that "LoRA on" is checked too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch, peft_model = texts()[:4], model.icae
    ids = torch.tensor(batch)
    embed = peft_model.get_input_embeddings()

    def official(prompt: torch.Tensor, targets: torch.Tensor, ignored: int = 0) -> float:
        labels = torch.cat([torch.full((len(batch), prompt.shape[1]), -100), targets], 1)
        labels[:, prompt.shape[1] : prompt.shape[1] + ignored] = -100
        with peft_model.disable_adapter():
            logits = peft_model(inputs_embeds=torch.cat([prompt, embed(targets)], 1)).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
        ).item()

    with torch.no_grad():
        memory = model.memory_token_embed.weight[:MEM_SIZE].expand(len(batch), -1, -1)
        x = torch.cat([embed(ids), memory], 1)
        hidden = peft_model(inputs_embeds=x, output_hidden_states=True).hidden_states[-1]
        with peft_model.disable_adapter():
            plain = peft_model(inputs_embeds=x, output_hidden_states=True).hidden_states[-1]
        assert not torch.allclose(hidden, plain), "the LoRA must change the encoder"
        slots = model.slot_projector(hidden[:, -MEM_SIZE:])
        ae = model.special(Objective.AUTOENCODE).expand(len(batch), -1, -1)
        eos = torch.full((len(batch), 1), model.eos_ids[0])
        ae_loss = official(torch.cat([slots, ae], 1), torch.cat([ids, eos], 1))
        following = torch.tensor([[(t * 7 + 3) % VOCAB for t in text] for text in batch])
        lm_loss = official(slots, following, ignored=2)

        assert model.autoencode_batch_scores(batch)[0].item() == pytest.approx(ae_loss, rel=1e-5)
        ours_lm, targets = model.lm_batch_loss(batch, following.tolist(), leave=2)
        assert targets == len(batch) * (TEXT_TOKENS - 2)
        assert ours_lm.item() == pytest.approx(lm_loss, rel=1e-5)


@torch.no_grad()
def test_the_held_out_read_back_has_a_wrong_slots_control(tiny_dir):
    """`icae-train eval`'s teacher-forced measures: the token-weighted mean of each
    passage's `autoencode_scores`, and the same passages read back from the next passage's
    slots. Slots that carry nothing (all the same) give a slot gain of exactly 0."""
    torch.manual_seed(0)
    config = IcaeConfig(mem_size=MEM_SIZE, compression_rate=RATE, lora_r=8, slot_projector=True)
    model = ICAE(str(tiny_dir), config).eval()
    passages = texts()[:3]
    own = [model.compress(p) for p in passages]
    report = teacher_forced_eval(model, passages, own)
    scores = [model.autoencode_scores(p) for p in passages]
    total = sum(n for _, _, n in scores)
    assert report["loss"] == pytest.approx(sum(m.item() * n for m, _, n in scores) / total)
    assert report["accuracy"] == sum(right for _, right, _ in scores) / total
    assert report["slot_gain"] == pytest.approx(report["loss_other_slots"] - report["loss"])
    assert abs(report["slot_gain"]) > 1e-3, "different slots must read back differently"
    uninformative = teacher_forced_eval(model, passages, [own[0]] * len(passages))
    assert uninformative["slot_gain"] == pytest.approx(0.0, abs=1e-6)
    assert "slot_gain" not in teacher_forced_eval(model, passages[:1], own[:1])
