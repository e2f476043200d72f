"""Training throughput on the CPU: one AE step on a batch of equal-length
windows, alternating in one run between
  one_by_one          texts one by one (forward + backward each),
  batched             the whole batch in one forward (`ICAE.autoencode_batch_scores`),
  batched_full_logits the same batch computing what the official code computes: the
                      encoder's LM head and the decoder's logits at every position;
f32, and bf16 autocast of the first two where asked.

    $ICAE_VENV/bin/python scripts/bench/train_throughput.py --model "$ICAE_MODEL_DIR" \
        --batch 8 --text-tokens 64 --repeats 3
"""

import argparse
import json
import random
import time

import torch

from icae_train.model import ICAE, IcaeConfig, Objective


def model_and_texts(model_dir: str, batch: int, text_tokens: int, rate: int):
    """The benchmarks' model in training mode (LoRA r16 on q and v, the slot projector, one
    segment of `text_tokens` at `rate`) and `batch` random texts of that length."""
    torch.manual_seed(0)
    config = IcaeConfig(
        mem_size=text_tokens // rate, compression_rate=rate, lora_r=16, slot_projector=True
    )
    model = ICAE(model_dir, config)
    model.train()
    rng = random.Random(0)
    vocab = model.icae.get_base_model().config.vocab_size
    return model, [[rng.randrange(vocab) for _ in range(text_tokens)] for _ in range(batch)]


def full_logits_loss(model, texts) -> torch.Tensor:
    """The batched AE loss with every logit computed (as before the model trimmed them)."""
    ids = torch.tensor(texts)
    k = model.config.mem_size
    memory = model.memory_token_embed.weight[:k].expand(len(texts), -1, -1)
    x = torch.cat([model._table(ids), memory], dim=1)
    hidden = model.icae(inputs_embeds=x, output_hidden_states=True).hidden_states[-1]
    slots = model.to_decoder(hidden[:, -k:])
    targets = torch.cat([ids, torch.full((len(texts), 1), model.eos_ids[0])], dim=1)
    ae = model.special(Objective.AUTOENCODE).expand(len(texts), -1, -1)
    with model.icae.disable_adapter():
        logits = model.icae(inputs_embeds=torch.cat([slots, ae, model._table(targets)], 1)).logits
    predicted = logits[:, k : k + targets.shape[1]]
    return torch.nn.functional.cross_entropy(predicted.flatten(0, 1), targets.flatten())


def step(model, texts, mode: str, autocast: bool):
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        if mode == "batched":
            model.autoencode_batch_scores(texts)[0].backward()
        elif mode == "batched_full_logits":
            full_logits_loss(model, texts).backward()
        else:
            for ids in texts:
                loss, _ = model.autoencode_loss(ids)
                (loss / len(texts)).backward()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--rate", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--autocast", action="store_true", help="also time bf16 autocast")
    parser.add_argument(
        "--modes",
        default="one_by_one,batched",
        help="comma-separated, of one_by_one, batched, batched_full_logits",
    )
    args = parser.parse_args()
    chosen = args.modes.split(",")
    unknown = set(chosen) - {"one_by_one", "batched", "batched_full_logits"}
    if unknown:
        parser.error(f"unknown --modes {sorted(unknown)}")
    model, texts = model_and_texts(args.model, args.batch, args.text_tokens, args.rate)
    modes = [(mode, mode, False) for mode in chosen]
    if args.autocast:
        modes += [(f"{mode}_bf16", mode, True) for mode in chosen if mode != "batched_full_logits"]
    if "batched_full_logits" in chosen:  # the two timed paths compute the same loss
        with torch.no_grad():
            ours, full = model.autoencode_batch_scores(texts)[0], full_logits_loss(model, texts)
        assert torch.allclose(ours, full, rtol=1e-5), (ours.item(), full.item())
    step(model, texts, "batched", False)  # warm-up
    best = {name: float("inf") for name, _, _ in modes}
    for _ in range(args.repeats):
        for name, mode, autocast in modes:
            best[name] = min(best[name], step(model, texts, mode, autocast))
    targets = args.batch * (args.text_tokens + 1)
    report = {
        "batch": args.batch,
        "text_tokens": args.text_tokens,
        "threads": torch.get_num_threads(),
        "seconds_per_step": best,
        "examples_per_s": {k: args.batch / v for k, v in best.items()},
        "target_tokens_per_s": {k: targets / v for k, v in best.items()},
        "speed-ups": {
            f"batched_over_{mode}": best[mode] / best["batched"]
            for mode in ("one_by_one", "batched_full_logits")
            if mode in best and "batched" in best
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
