"""The ICAE module, laid out like the official v2 code (getao/icae, modeling_icae_multi_span.py):
`self.icae` is the peft-wrapped base model and `self.memory_token_embed` the table of
`mem_size` memory tokens plus the AE, LM and FT tokens, so the trainable state dict has the
official keys (`icae.base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.default.weight`,
`memory_token_embed.weight`).

The decoder is the same base model with the adapter disabled (the official code keeps a
second frozen copy for training; the computation is the same).

Optionally (`IcaeConfig.slot_projector`, our extension) a trainable linear map
`self.slot_projector` (hidden x hidden + bias) is applied to the slots before the decoder
reads them; its tensors are `slot_projector.weight` / `slot_projector.bias`. Without it the
module is exactly the official one."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from .config import IcaeConfig


class Objective(enum.Enum):
    """The three training objectives. The value is the name a run records for a step's
    examples (`kind` in metrics.jsonl and the checkpoint history): keep it stable."""

    AUTOENCODE = "ae"
    LM = "lm"
    FINETUNE = "ft"

    @property
    def token_row(self) -> int:
        """Offset of the objective's special token after the `mem_size` memory tokens in
        `memory_token_embed` (the official order: AE, LM, FT)."""
        return _TOKEN_ROWS[self]


_TOKEN_ROWS = {Objective.AUTOENCODE: 0, Objective.LM: 1, Objective.FINETUNE: 2}


@dataclass(frozen=True)
class AutoencodeInput:
    """One autoencoding example: the text to compress and reconstruct."""

    ids: list[int]
    objective: ClassVar[Objective] = Objective.AUTOENCODE


@dataclass(frozen=True)
class LmInput:
    """One language-modelling example: continue `context` (from its slots) with
    `continuation`; the first `leave` continuation tokens carry no loss."""

    context: list[int]
    continuation: list[int]
    leave: int
    objective: ClassVar[Objective] = Objective.LM


@dataclass(frozen=True)
class AnswerInput:
    """One fine-tuning example in the ANSWER layout: `prefix` slots [FT] `prompt` `suffix`,
    then `answer`."""

    context: list[int]
    prompt: list[int]
    answer: list[int]
    prefix: list[int]
    suffix: list[int]
    objective: ClassVar[Objective] = Objective.FINETUNE


@dataclass(frozen=True)
class AutoencodeBatch:
    """Autoencoding examples of one length (one segment, or whole segments), trained as one
    batched forward (`ICAE.autoencode_batch_scores`): the same loss as their examples one by
    one, several times the examples per second on a CPU. `first_target_weight` weighs each
    text's first target (see `ICAE.autoencode_batch_scores`)."""

    texts: list[list[int]]
    first_target_weight: float = 1.0
    objective: ClassVar[Objective] = Objective.AUTOENCODE


# What `ICAE.forward` takes: one example (or one batch of AE examples) of any objective.
ObjectiveInput = AutoencodeInput | AutoencodeBatch | LmInput | AnswerInput


class ICAE(nn.Module):
    def __init__(self, model_dir: str, config: IcaeConfig, dtype=torch.float32, device="cpu"):
        super().__init__()
        self.config = config
        base = load_base(model_dir, dtype)
        for p in base.parameters():
            p.requires_grad = False
        self.eos_ids = _eos_ids(base)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            target_modules=list(config.target_modules),
            lora_dropout=config.lora_dropout,
            bias="none",
        )
        self.icae = get_peft_model(base, lora)
        hidden = base.config.hidden_size
        self.memory_token_embed = nn.Embedding(config.mem_size + 3, hidden)
        # Memory tokens start on the scale of real token embeddings (nn.Embedding's N(0, 1)
        # is ~8x larger than SmolLM2's embedding rows and slows early training), drawn from
        # their own generator seeded with the run's seed: the same for any LoRA shape (the
        # LoRA init draws from the global one), so recipes differing in rank start equal.
        with torch.no_grad():
            rms = base.get_input_embeddings().weight.float().pow(2).mean().sqrt().item()
            own = torch.Generator().manual_seed(torch.initial_seed())
            self.memory_token_embed.weight.normal_(0.0, rms, generator=own)
        self.slot_projector = slot_projector_init(base) if config.slot_projector else None
        self.slot_scale = (
            nn.Parameter(torch.tensor(slot_embedding_scale(base))) if config.slot_scale else None
        )
        self.to(device)
        self.device = torch.device(device)

    # ------------------------------------------------------------------ pieces

    def embed(self, ids: list[int]) -> torch.Tensor:
        return self._table(torch.tensor(ids, dtype=torch.long, device=self.device))

    def special(self, objective: Objective) -> torch.Tensor:
        row = self.config.mem_size + objective.token_row
        return self.memory_token_embed.weight[row].unsqueeze(0)

    def num_segments(self, length: int) -> int:
        return math.ceil(length / (self.config.mem_size * self.config.compression_rate))

    def compress(self, ids: list[int], memory_tokens: int | None = None) -> torch.Tensor:
        """Slots `[n_seg * k, hidden]`, segment by segment as the official `_compress`:
        each segment is [tokens ++ memory tokens] through the LoRA model, and the final hidden
        states (after the last norm) at the memory positions are kept. `k` is `memory_tokens`
        (the first ones of the table, segments as long as at the trained rate: a higher
        rate, as `--slots-per-segment` in the services) or `mem_size`."""
        assert ids, "cannot compress an empty text"
        k = memory_tokens or self.config.mem_size
        n_seg = self.num_segments(len(ids))
        seg_len = math.ceil(len(ids) / n_seg)
        memory = self.memory_token_embed.weight[:k]
        out = []
        for s in range(n_seg):
            segment = ids[s * seg_len : (s + 1) * seg_len]
            x = torch.cat([self.embed(segment), memory.to(self.dtype)], dim=0).unsqueeze(0)
            out.append(self.encoder_states(x)[0, -k:])
        return self.to_decoder(torch.cat(out))

    def add_identity_slot_projector(self) -> None:
        """Give a model without a slot projector one at the identity (bias 0), not at
        slot_projector_init's embedding scale: the slots, and so everything the model computes,
        stay exactly what they were, and training moves the projector from there (a warm start
        from a trained adapter that has none, e.g. the committed default)."""
        if self.slot_projector is not None or self.slot_scale is not None:
            raise ValueError("the model already maps its slots (a projector or a learned scale)")
        hidden = self.memory_token_embed.embedding_dim
        self.slot_projector = scaled_identity(hidden, 1.0).to(self.device)
        self.config.slot_projector = True

    def to_decoder(self, slots: torch.Tensor) -> torch.Tensor:
        """The slots as the decoder reads them: through the projector or the learned scale
        if the adapter has one (computed in f32, like memory_token_embed, under a bf16
        model), else as they are."""
        if self.slot_projector is not None:
            return self.slot_projector(slots.float()).to(slots.dtype)
        if self.slot_scale is not None:
            return (slots.float() * self.slot_scale).to(slots.dtype)
        return slots

    @property
    def dtype(self):
        return self.icae.get_base_model().model.embed_tokens.weight.dtype

    def encoder_states(self, x: torch.Tensor) -> torch.Tensor:
        """The LoRA model's final hidden states (after the last norm) for `x`
        `[batch, length, hidden]`: the transformer body only, since the encoder needs no
        logits (the LM head over the whole vocabulary would be ~5% of a training step)."""
        body = self.icae.get_base_model().model
        return body(inputs_embeds=x, use_cache=False).last_hidden_state

    def target_logits(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The frozen decoder's logits `[batch, n, vocab]` predicting the last `n` inputs of
        `x` `[batch, length, hidden]` (positions length-n-1 … length-2: teacher forcing). The
        LM head runs only there, not over the slots and the prompt."""
        with self.icae.disable_adapter():
            base = self.icae.get_base_model()
            hidden = base.model(inputs_embeds=x, use_cache=False).last_hidden_state
            hidden = hidden[:, -n - 1 : -1]
            # Contiguous, so that the head and its backward are one plain matrix product.
            return base.lm_head(hidden.contiguous())

    # ------------------------------------------------------------------ layouts

    def ae_layout(self, slots: torch.Tensor) -> torch.Tensor:
        return torch.cat([slots, self.special(Objective.AUTOENCODE).to(slots.dtype)])

    def answer_layout(
        self,
        slots: torch.Tensor,
        prompt_ids: list[int],
        prefix_ids: list[int],
        suffix_ids: list[int],
    ) -> torch.Tensor:
        return torch.cat(
            [
                self.embed(prefix_ids),
                slots,
                self.special(Objective.FINETUNE).to(slots.dtype),
                self.embed(prompt_ids),
                self.embed(suffix_ids),
            ]
        )

    # ------------------------------------------------------------------ objectives

    def _predictions(
        self, prompt: torch.Tensor, target_ids: list[int], ignored: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits for `target_ids` after `prompt` and the targets themselves
        (the first `ignored` dropped), as the official labels [-100] * len(prompt) + answer
        with logits[:-1] vs labels[1:]."""
        x = torch.cat([prompt, self.embed(target_ids)]).unsqueeze(0)
        predicted = self.target_logits(x, len(target_ids))[0].float()
        targets = torch.tensor(target_ids, device=self.device)
        return predicted[ignored:], targets[ignored:]

    def _loss(
        self, prompt: torch.Tensor, target_ids: list[int], ignored: int = 0
    ) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy of `target_ids` after `prompt` and the number of targets."""
        predicted, targets = self._predictions(prompt, target_ids, ignored)
        return nn.functional.cross_entropy(predicted, targets), len(targets)

    def autoencode_loss(self, ids: list[int]):
        return self._loss(self.ae_layout(self.compress(ids)), ids + [self.eos_ids[0]])

    def autoencode_scores(self, ids: list[int]) -> tuple[torch.Tensor, int, int]:
        """(mean loss, correct argmax predictions, targets) of the AE example, teacher-forced:
        the token accuracy the overfit check and the recipe comparisons measure."""
        return self.read_back_scores(self.compress(ids), ids)

    def read_back_scores(
        self, slots: torch.Tensor, ids: list[int]
    ) -> tuple[torch.Tensor, int, int]:
        """`autoencode_scores` of reading `ids` back from given `slots` (the text's own, or
        another text's as a control)."""
        predicted, targets = self._predictions(self.ae_layout(slots), ids + [self.eos_ids[0]])
        correct = int((predicted.argmax(-1) == targets).sum())
        return nn.functional.cross_entropy(predicted, targets), correct, len(targets)

    def batch_slots(
        self, texts: list[list[int]], memory_tokens: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids `[batch, length]`, slots as the decoder reads them
        `[batch, segments * k, hidden]`) of equal-length texts, every segment of every text in
        one encoder forward. `k` is `memory_tokens` (the first ones of the table; a short text
        at the same rate) or `mem_size`. The texts are cut as `compress` cuts them (into
        ceil(length / (k * rate)) segments), and their segments must be of one length, as
        they are when the length is a multiple of the segment count (e.g. whole segments)."""
        length, k = len(texts[0]), memory_tokens or self.config.mem_size
        capacity = k * self.config.compression_rate
        segments = math.ceil(length / capacity)
        if any(len(t) != length for t in texts) or length == 0 or length % segments:
            raise ValueError(
                f"a batch needs texts of one length that splits into segments of one length "
                f"(at most {capacity} tokens for {k} memory tokens); "
                f"lengths {sorted({*map(len, texts)})}"
            )
        ids = torch.tensor(texts, dtype=torch.long, device=self.device)
        pieces = ids.reshape(len(texts) * segments, length // segments)
        memory = self.memory_token_embed.weight[:k].to(self.dtype).expand(len(pieces), -1, -1)
        x = torch.cat([self._table(pieces), memory], dim=1)
        slots = self.encoder_states(x)[:, -k:].reshape(len(texts), segments * k, -1)
        return ids, self.to_decoder(slots)

    def _table(self, ids: torch.Tensor) -> torch.Tensor:
        return self.icae.get_base_model().model.embed_tokens(ids)

    def autoencode_batch_scores(
        self,
        texts: list[list[int]],
        aux_weight: float = 0.0,
        memory_tokens: int | None = None,
        first_target_weight: float = 1.0,
    ) -> tuple[torch.Tensor, int, int]:
        """`autoencode_scores` of equal-length texts (see `batch_slots`), in one
        encoder and one decoder forward for the whole batch: the same numbers as one by one
        (the mean loss is over all targets, equal to the mean of the texts' means), with
        bigger matmuls, which is most of the throughput on a CPU. With `aux_weight` the loss
        adds that multiple of `slot_token_loss` (accuracy stays the AE one). With
        `first_target_weight` w, each text's first target (predicted at the [AE] position)
        counts w times in the mean and the others once."""
        ids, slots = self.batch_slots(texts, memory_tokens)
        batch = slots.shape[0]
        eos = torch.full((batch, 1), self.eos_ids[0], dtype=torch.long, device=self.device)
        targets = torch.cat([ids, eos], dim=1)
        ae = self.special(Objective.AUTOENCODE).to(slots.dtype).expand(batch, -1, -1)
        x = torch.cat([slots, ae, self._table(targets)], dim=1)
        predicted = self.target_logits(x, targets.shape[1]).float()
        if first_target_weight == 1.0:
            loss = nn.functional.cross_entropy(predicted.flatten(0, 1), targets.flatten())
        else:
            losses = nn.functional.cross_entropy(
                predicted.flatten(0, 1), targets.flatten(), reduction="none"
            ).view_as(targets)
            weights = torch.ones_like(losses)
            weights[:, 0] = first_target_weight
            loss = (losses * weights).sum() / weights.sum()
        correct = int((predicted.argmax(-1) == targets).sum())
        if aux_weight:
            loss = loss + aux_weight * self.slot_token_loss(slots, ids)
        return loss, correct, targets.numel()

    def slot_token_loss(self, slots: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The recipe search's auxiliary loss: each memory token predicts, through the LM
        head, every token of its own stretch of the text (slot i of k covers tokens j with
        j * k // length == i): mean cross-entropy over all tokens."""
        k, length = slots.shape[1], ids.shape[1]
        logits = self.icae.get_base_model().lm_head(slots).float()
        owner = torch.arange(length, device=self.device) * k // length
        return nn.functional.cross_entropy(logits[:, owner].flatten(0, 1), ids.flatten())

    def lm_batch_loss(
        self, contexts: list[list[int]], continuations: list[list[int]], leave: int
    ) -> tuple[torch.Tensor, int]:
        """`lm_loss` of a batch (equal-length contexts as `batch_slots` takes them,
        equal-length continuations) in one encoder and one decoder forward: (mean loss, targets)."""
        _, slots = self.batch_slots(contexts)
        following = torch.tensor(continuations, dtype=torch.long, device=self.device)
        prompt = self.lm_prompt(slots)
        x = torch.cat([prompt, self._table(following)], dim=1)
        predicted = self.target_logits(x, following.shape[1])[:, leave:].float()
        targets = following[:, leave:]
        loss = nn.functional.cross_entropy(predicted.flatten(0, 1), targets.flatten())
        return loss, targets.numel()

    def lm_loss(self, context: list[int], continuation: list[int], leave: int):
        return self._loss(self.lm_prompt(self.compress(context)), continuation, ignored=leave)

    def lm_prompt(self, slots: torch.Tensor) -> torch.Tensor:
        """The LM objective's prompt: the slots (`[k, hidden]`, or `[batch, k, hidden]`), then
        the [LM] token when the config has one."""
        if not self.config.lm_token:
            return slots
        lm = self.special(Objective.LM).to(slots.dtype)
        return torch.cat([slots, lm.expand(*slots.shape[:-2], -1, -1)], dim=-2)

    def finetune_loss(self, context, prompt_ids, answer_ids, prefix_ids, suffix_ids):
        slots = self.compress(context)
        return self._loss(
            self.answer_layout(slots, prompt_ids, prefix_ids, suffix_ids),
            answer_ids + [self.eos_ids[0]],
        )

    def forward(self, example: ObjectiveInput):
        """(mean loss, target tokens) of one typed example, by its objective. Training calls
        the module itself, so DistributedDataParallel sees a forward pass."""
        if isinstance(example, AutoencodeInput):
            return self.autoencode_loss(example.ids)
        if isinstance(example, AutoencodeBatch):
            loss, _, targets = self.autoencode_batch_scores(
                example.texts, first_target_weight=example.first_target_weight
            )
            return loss, targets
        if isinstance(example, LmInput):
            return self.lm_loss(example.context, example.continuation, example.leave)
        if isinstance(example, AnswerInput):
            return self.finetune_loss(
                example.context, example.prompt, example.answer, example.prefix, example.suffix
            )
        raise TypeError(f"not a training example: {type(example).__name__}")

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def greedy(self, embeds: torch.Tensor, max_new_tokens: int) -> list[int]:
        """Greedy decoding with the adapter off, stopping at an end-of-sequence token."""
        out = []
        with self.icae.disable_adapter():
            result = self.icae(inputs_embeds=embeds.unsqueeze(0), use_cache=True)
            for _ in range(max_new_tokens):
                token = int(result.logits[0, -1].argmax())
                if token in self.eos_ids:
                    break
                out.append(token)
                ids = torch.tensor([[token]], device=self.device)
                result = self.icae(
                    input_ids=ids, past_key_values=result.past_key_values, use_cache=True
                )
        return out

    # ------------------------------------------------------------------ state

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The official v2 file content: LoRA tensors and memory_token_embed only."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach() for k, v in self.state_dict().items() if k in names}

    def load_trainable(self, tensors: dict[str, torch.Tensor]):
        missing = set(self.trainable_state()) - set(tensors)
        unexpected = set(tensors) - set(self.trainable_state())
        if missing or unexpected:
            raise ValueError(
                f"adapter tensors do not match: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}"
            )
        self.load_state_dict({k: v.to(self.device) for k, v in tensors.items()}, strict=False)


def load_base(model: str, dtype):
    """An HF model directory, or a GGUF file (94 MiB instead of the imported directory's 514
    MiB, e.g. `scripts/train-gpu.sh --model FILE.gguf`). transformers dequantizes the GGUF
    with the `gguf` package to the same f32 values as `icae import`."""
    path = Path(model)
    if path.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype
        )
    return AutoModelForCausalLM.from_pretrained(model, dtype=dtype)


def slot_embedding_scale(base) -> float:
    """RMS of the token embeddings over RMS of the final norm's weight: slots are final-norm
    outputs, whose RMS is about that weight's RMS, so this brings them to the scale of real
    tokens."""
    embed_rms = base.get_input_embeddings().weight.float().pow(2).mean().sqrt()
    norm_rms = base.model.norm.weight.float().pow(2).mean().sqrt()
    return float(embed_rms / norm_rms)


def slot_projector_init(base) -> nn.Linear:
    """`nn.Linear(hidden, hidden)` initialised to `identity * s`, bias 0, with `s` the RMS of
    the token embeddings over the RMS of the final norm's weight. Slots are final-norm
    outputs, whose RMS is about that weight's RMS (the normalised input has RMS 1; SmolLM2:
    1.8 vs 1.9 measured), so the projected slots start at the scale of real tokens (SmolLM2:
    0.13, ~15x smaller than raw slots) while keeping their direction. Deterministic: no data
    needed."""
    return scaled_identity(base.config.hidden_size, slot_embedding_scale(base))


def scaled_identity(hidden: int, scale: float) -> nn.Linear:
    """`nn.Linear(hidden, hidden)` in f32 computing `scale * x` (weight `scale * I`, bias 0)."""
    projector = nn.Linear(hidden, hidden, dtype=torch.float32)
    with torch.no_grad():
        projector.weight.copy_(torch.eye(hidden) * scale)
        projector.bias.zero_()
    return projector


def _eos_ids(model) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    if eos is None:
        eos = model.config.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]
