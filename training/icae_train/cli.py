"""icae-train: build data, pretrain, fine-tune, evaluate and export ICAE adapters."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch


def _device(name: str) -> tuple[str, torch.dtype]:
    """bf16 on GPU, f32 on CPU (never fp16: slots overflow it). Under a multi-process launch
    (torchrun / accelerate launch) each process takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    return name, (torch.float32 if name == "cpu" else torch.bfloat16)


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _model_args(p: argparse.ArgumentParser):
    p.add_argument("--model", required=True, help="HF-layout base model directory")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def _icae_args(p: argparse.ArgumentParser, mem_size: int, lora_r: int, targets: str):
    """The adapter's shape (what a fresh ICAE is built with); defaults differ by command."""
    p.add_argument("--mem-size", type=int, default=mem_size)
    p.add_argument("--compression-rate", type=int, default=4)
    p.add_argument("--lora-r", type=int, default=lora_r)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--target-modules", default=targets)
    p.add_argument(
        "--slot-projector",
        action="store_true",
        help="train a linear map on the slots (hidden x hidden + bias, starts at the token "
        "embeddings' scale; the recipe search's strongest lever); recorded in icae_config.json",
    )


def _icae_config(args):
    from .model import IcaeConfig

    return IcaeConfig(
        mem_size=args.mem_size,
        compression_rate=args.compression_rate,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        target_modules=args.target_modules.split(","),
        lm_token=getattr(args, "lm_token", False),
        slot_projector=args.slot_projector,
    )


def _train_args(p: argparse.ArgumentParser):
    p.add_argument(
        "--run-dir",
        required=True,
        type=Path,
        help="checkpoints, metrics, loss.png and the adapter go here",
    )
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps of the run")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--memory-lr",
        type=float,
        default=None,
        help="learning rate of memory_token_embed (default: --lr)",
    )
    p.add_argument(
        "--projector-lr",
        type=float,
        default=None,
        help="learning rate of the slot projector, if the adapter has one (default: --memory-lr)",
    )
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument(
        "--min-lr-ratio",
        type=float,
        default=0.1,
        help="cosine decay floor as a share of the peak lr",
    )
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-accum", type=int, default=1, help="examples per optimizer step")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over even if the run directory has a checkpoint",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="run at most this many steps in this invocation (resumable)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="end this invocation with a checkpoint after this much wall time (resumable)",
    )
    p.add_argument(
        "--cpu-autocast",
        choices=["off", "on", "auto"],
        default="off",
        help="bf16 autocast of the forward on a CPU; auto: only where the CPU has AMX-BF16 or "
        "AVX512-BF16 (elsewhere bf16 is emulated and slower than f32)",
    )
    p.add_argument(
        "--no-export",
        action="store_true",
        help="write only the checkpoint, not run-dir/adapter (e.g. on a machine without the "
        "imported model directory; `icae-train export` later)",
    )


def _train_config(args):
    from .train import TrainConfig, use_cpu_autocast

    return TrainConfig(
        steps=args.steps,
        lr=args.lr,
        memory_lr=args.memory_lr,
        projector_lr=args.projector_lr,
        warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay,
        grad_accum=args.grad_accum,
        max_grad_norm=args.max_grad_norm,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        # Decided here, once, so that run.json records what really ran.
        cpu_autocast=use_cpu_autocast(args.cpu_autocast, _device(args.device)[0]),
    )


def _tokenize_documents(tokenizer, path: Path, limit: int | None) -> list[list[int]]:
    from .data import read_jsonl

    texts = [d["text"] for d in read_jsonl(path)][:limit]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def cmd_build_corpus(args):
    from .corpus import build

    print(json.dumps(build(args.out, args.heldout_percent), indent=2))


def cmd_tokenize(args):
    from transformers import AutoTokenizer

    from .data import write_tokens

    documents = _tokenize_documents(
        AutoTokenizer.from_pretrained(args.model), args.corpus / "train.jsonl", None
    )
    write_tokens(args.out, documents)
    print(json.dumps({"documents": len(documents), "tokens": sum(map(len, documents))}))


def _overfit_texts(args, tokenizer) -> list[list[int]]:
    """`--texts` windows of `--text-tokens` tokens from the corpus (or, without one, the
    Markdown files under the repository's docs/), chosen by `--seed`."""
    import random

    from .data import read_tokens

    if args.tokens:
        documents = read_tokens(args.tokens)
    elif args.corpus:
        documents = _tokenize_documents(tokenizer, args.corpus / "train.jsonl", None)
    else:
        docs_dir = Path(__file__).resolve().parents[2] / "docs"
        texts = [p.read_text() for p in sorted(docs_dir.glob("*.md"))]
        documents = tokenizer(texts, add_special_tokens=False)["input_ids"]
    # Non-overlapping windows of every document, `--texts` of them drawn by `--seed`.
    n = args.text_tokens
    windows = [d[i : i + n] for d in documents for i in range(0, len(d) - n + 1, n)]
    if len(windows) < args.texts:
        sys.exit(f"error: only {len(windows)} windows of {n} tokens in the texts")
    return random.Random(args.seed).sample(windows, args.texts)


def cmd_overfit(args):
    from transformers import AutoTokenizer

    from .model import ICAE
    from .overfit import OverfitConfig, overfit

    device, dtype = _device(args.device)
    texts = _overfit_texts(args, AutoTokenizer.from_pretrained(args.model))
    config = _icae_config(args)
    torch.manual_seed(args.seed)
    model = ICAE(args.model, config, dtype=dtype, device=device)
    cfg = OverfitConfig(
        max_steps=args.steps,
        target_accuracy=args.target_accuracy,
        lr=args.lr,
        memory_lr=args.memory_lr,
        projector_lr=args.projector_lr,
    )
    history = overfit(model, texts, cfg, log=lambda r: print(json.dumps(r), flush=True))
    report = {"icae": config.__dict__, "overfit": cfg.__dict__, "history": history}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    last = history[-1]
    reached = last["accuracy"] >= args.target_accuracy
    print(
        f"{'reached' if reached else 'did not reach'} accuracy {args.target_accuracy} "
        f"(last {last['accuracy']:.3f}, loss {last['loss']:.3f}) at step {last['step']} "
        f"in {last['seconds']:.0f} s"
    )


def cmd_make_qa(args):
    from .data import read_jsonl
    from .qa import make_qa

    documents = [d["text"] for d in read_jsonl(args.corpus / "train.jsonl")]
    print(json.dumps(make_qa(args.model, documents, args.count, args.seed, args.out)))


def cmd_make_cloze(args):
    from .cloze import make_cloze, write_cloze
    from .data import read_jsonl

    documents = [d.get("text") or d["input"] for d in read_jsonl(args.documents)]
    records = make_cloze(documents, args.passages, args.per_passage, args.seed)
    print(json.dumps(write_cloze(records, args.out)))


def cmd_search(args):
    from transformers import AutoTokenizer

    from .search import DEFAULT_CANDIDATES, Protocol, parse_candidate, plot_curves, search

    device, dtype = _device(args.device)
    try:
        candidates = [parse_candidate(c) for c in args.candidate] or DEFAULT_CANDIDATES
    except ValueError as e:
        sys.exit(f"error: {e}")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    train_docs = _tokenize_documents(tokenizer, args.corpus / "train.jsonl", args.max_documents)
    heldout_docs = _tokenize_documents(tokenizer, args.corpus / "heldout.jsonl", None)
    protocol = Protocol(
        steps=args.steps,
        batch=args.batch,
        text_tokens=args.text_tokens,
        eval_every=args.eval_every,
        eval_texts=args.eval_texts,
        seed=args.seed,
        mem_size=args.text_tokens // args.compression_rate,
        compression_rate=args.compression_rate,
        target_modules=args.target_modules.split(","),
    )

    def log(name, record):
        print(json.dumps({"candidate": name, **record}), flush=True)

    report = search(args.model, candidates, protocol, train_docs, heldout_docs, dtype, device, log)
    args.out.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot_curves(report, args.plot)
    for row in report["table"]:
        print(
            f"{row['name']:<20} accuracy {row['start']['accuracy']:.3f} -> {row['accuracy']:.3f}"
            f"  loss {row['start']['loss']:.3f} -> {row['loss']:.3f}"
        )


def _train_and_export(args, model, tokenizer, example_for, objective: str, notes: str):
    """The tail pretraining and fine-tuning share: run (or resume) the training loop in
    `args.run_dir`, then, on the main process, write the adapter to `run_dir/adapter`.
    `objective` ("pretrain" or "finetune") is recorded in the checkpoint; a resume checks it."""
    from .adapter_io import save_adapter
    from .train import train

    meta = {
        "objective": objective,
        "icae": model.config.__dict__,
        "args": {k: str(v) for k, v in vars(args).items() if k != "func"},
    }
    train(
        model,
        _train_config(args),
        args.run_dir,
        example_for,
        meta,
        resume=not args.no_resume,
        stop_after=args.stop_after,
        max_seconds=None if args.max_minutes is None else args.max_minutes * 60,
    )
    if not _is_main_process() or args.no_export:
        return
    save_adapter(model, args.model, args.run_dir / "adapter", tokenizer, notes)
    print(f"adapter written to {args.run_dir / 'adapter'}")


def cmd_pretrain(args):
    from transformers import AutoTokenizer

    from .data import PretrainStream
    from .model import ICAE, AutoencodeBatch, AutoencodeInput, LmInput

    device, dtype = _device(args.device)
    if args.batch_windows and args.lm_ratio != 0:
        sys.exit(
            "error: --batch-windows trains autoencoding only: it needs "
            f"--lm-ratio 0 (given {args.lm_ratio})"
        )
    # The tokenizer reads --corpus and goes into the exported adapter. A GGUF base has no
    # tokenizer directory: it takes --tokens.
    needs_tokenizer = not args.tokens or not args.no_export
    tokenizer = (
        AutoTokenizer.from_pretrained(args.model)
        if needs_tokenizer and not args.model.endswith(".gguf")
        else None
    )
    config = _icae_config(args)
    torch.manual_seed(args.seed)
    if args.init_adapter:
        # Warm start from an adapter directory (e.g. the committed default adapter): its
        # configuration wins; the optimizer starts fresh.
        from .adapter_io import load_adapter

        model = load_adapter(args.model, args.init_adapter, device=device, dtype=dtype)
        if args.slot_projector and model.slot_projector is None:
            model.add_identity_slot_projector()
        config = model.config
    else:
        model = ICAE(args.model, config, dtype=dtype, device=device)
    capacity = config.mem_size * config.compression_rate
    if args.tokens:
        from .data import read_tokens

        documents = read_tokens(args.tokens)[: args.max_documents]
    elif args.corpus and tokenizer is not None:
        documents = _tokenize_documents(tokenizer, args.corpus / "train.jsonl", args.max_documents)
    else:
        sys.exit("error: pretrain needs --corpus (with an HF model directory) or --tokens")
    stream = PretrainStream(
        documents,
        seed=args.seed,
        max_tokens=capacity * args.max_segments,
        min_tokens=args.min_tokens,
        lm_ratio=args.lm_ratio,
        min_lm_tokens=args.min_lm_tokens,
    )

    def example_for(step, index):
        if args.batch_windows:
            return AutoencodeBatch(
                stream.window_batch(step, index, args.batch_windows, segment_tokens=capacity)
            )
        example = stream.example(step, index)
        if example.is_lm:
            return LmInput(example.context, example.continuation, args.leave_tokens_for_lm)
        return AutoencodeInput(example.context)

    notes = f"pretrained (AE + LM, lm_ratio {args.lm_ratio}) by icae-train for {args.run_dir.name}"
    if args.init_adapter:
        notes += f", continued from the adapter in {args.init_adapter}"
    notes += "; see docs/training.md"
    _train_and_export(args, model, tokenizer, example_for, "pretrain", notes)


def cmd_finetune(args):
    from transformers import AutoTokenizer

    from .adapter_io import chat_pieces, load_adapter
    from .data import FinetuneStream, read_jsonl
    from .model import AnswerInput

    device, dtype = _device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    pieces = chat_pieces(tokenizer)
    if pieces is None:
        sys.exit(
            "error: the base model has no chat template icae-train knows (chatml, llama-3, [INST])"
        )
    model = load_adapter(args.model, args.init_adapter, device=device, dtype=dtype)
    records = [r for path in args.data for r in read_jsonl(path)]
    stream = FinetuneStream(records, tokenizer, args.seed, args.max_context_tokens)

    def example_for(step, index):
        ex = stream.example(step, index)
        return AnswerInput(
            ex.context, ex.prompt, ex.answer, pieces["prefix_ids"], pieces["suffix_ids"]
        )

    notes = (
        f"fine-tuned (ANSWER layout) from {args.init_adapter} by icae-train "
        f"for {args.run_dir.name}; see docs/training.md"
    )
    _train_and_export(args, model, tokenizer, example_for, "finetune", notes)


def cmd_eval(args):
    from transformers import AutoTokenizer

    from .adapter_io import load_adapter
    from .data import read_jsonl
    from .evaluate import answer_eval, autoencode_eval, heldout_passages, long_teacher_forced_eval
    from .refine import RefineOptions

    device, dtype = _device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.heldout:
        documents = _tokenize_documents(tokenizer, args.heldout, None)
        lengths = [args.passage_tokens] + ([args.long_passage_tokens] if args.long_passages else [])
        try:  # before loading the model: a length no document reaches is an input error
            for length in lengths:
                heldout_passages(documents, length, 1, args.seed)
        except ValueError as e:
            sys.exit(f"error: {e}")
    model = load_adapter(args.model, args.adapter, device=device, dtype=dtype)
    report = {"adapter": str(args.adapter)}
    if args.heldout:
        report["autoencode"] = autoencode_eval(
            model, tokenizer, documents, args.passage_tokens, args.passages, args.seed
        )
        if args.long_passages:
            report["autoencode_long"] = long_teacher_forced_eval(
                model, documents, args.long_passage_tokens, args.long_passages, args.seed
            )
    if args.pwc:
        records = [r for path in args.pwc for r in read_jsonl(path)][: args.questions]
        refine = RefineOptions(args.refine_steps, args.refine_lr) if args.refine_steps else None
        report["answers"] = answer_eval(
            model,
            tokenizer,
            records,
            args.max_new_tokens,
            refine=refine,
            refine_slots_per_segment=args.refine_slots_per_segment,
        )
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


def cmd_refine_eval(args):
    from transformers import AutoTokenizer

    from .adapter_io import load_adapter
    from .evaluate import heldout_passages
    from .refine_eval import refine_eval

    device, _ = _device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    documents = _tokenize_documents(tokenizer, args.heldout, None)
    try:  # before loading the model: a length no document reaches is an input error
        heldout_passages(documents, args.passage_tokens, 1, args.seed)
    except ValueError as e:
        sys.exit(f"error: {e}")
    # f32 everywhere: the engine's parity with this oracle is checked in f32.
    model = load_adapter(args.model, args.adapter, device=device, dtype=torch.float32)
    report = refine_eval(
        model,
        tokenizer,
        documents,
        args.passage_tokens,
        args.passages,
        args.steps,
        args.lr,
        cold_start=args.cold_start,
        slots_per_passage=args.slots,
        seed=args.seed,
    )
    report["adapter"] = str(args.adapter)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


def cmd_export(args):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from .adapter_io import save_adapter
    from .model import ICAE, IcaeConfig

    progress = json.loads((args.run_dir / "checkpoint" / "progress.json").read_text())
    config = IcaeConfig(**progress["meta"]["icae"])
    model = ICAE(args.model, config)
    model.load_trainable(load_file(str(args.run_dir / "checkpoint" / "trainable.safetensors")))
    notes = (
        args.notes
        or f"{progress['meta']['objective']} checkpoint at step {progress['step']} "
        f"of {args.run_dir.name}; see docs/training.md"
    )
    lora_dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.lora_dtype]
    save_adapter(
        model,
        args.model,
        args.out,
        AutoTokenizer.from_pretrained(args.model),
        notes,
        lora_dtype=lora_dtype,
    )
    print(f"adapter (step {progress['step']}) written to {args.out}")


def cmd_promote(args):
    from .promote import promote

    try:
        decision = promote(args.adapter, args.eval, args.into, args.curve)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(decision))


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of tokens, got {value}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="icae-train", description=__doc__)
    sub = parser.add_subparsers(required=True)

    p = sub.add_parser(
        "build-corpus", help="build the offline plain-text corpus (train / held-out)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--heldout-percent", type=int, default=5)
    p.set_defaults(func=cmd_build_corpus)

    p = sub.add_parser(
        "tokenize", help="tokenize a corpus's train.jsonl into one .npz (for --tokens)"
    )
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser(
        "overfit",
        help="the overfit check: train on one fixed batch until its teacher-forced AE "
        "accuracy reaches a target",
    )
    _model_args(p)
    p.add_argument("--corpus", type=Path, help="texts from this corpus (default: docs/*.md)")
    p.add_argument("--tokens", type=Path, help="texts from this tokenized .npz")
    p.add_argument("--texts", type=int, default=8)
    p.add_argument("--text-tokens", type=int, default=64)
    _icae_args(p, 16, 16, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    p.add_argument("--steps", type=int, default=300, help="most optimizer steps")
    p.add_argument("--target-accuracy", type=float, default=0.95)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--memory-lr", type=float, default=1e-3)
    p.add_argument("--projector-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the history as JSON here")
    p.set_defaults(func=cmd_overfit)

    p = sub.add_parser(
        "make-qa", help="write (input, prompt, answer) triples with the base model itself"
    )
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--count", type=int, default=300, help="passages to try")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_make_qa)

    p = sub.add_parser(
        "make-cloze",
        help="write extractive cloze (input, prompt, answer) triples from passages; no model",
    )
    p.add_argument(
        "--documents",
        type=Path,
        required=True,
        help='JSONL of documents under "text" (a corpus split) or "input" (PwC format)',
    )
    p.add_argument("--passages", type=int, default=5000, help="passages to draw questions from")
    p.add_argument("--per-passage", type=int, default=2, help="most questions per passage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_make_cloze)

    p = sub.add_parser(
        "search",
        help="compare recipes under one protocol (same data, seed, examples seen, held-out set)",
    )
    _model_args(p)
    p.add_argument("--corpus", type=Path, required=True, help="with train.jsonl, heldout.jsonl")
    p.add_argument(
        "--candidate",
        action="append",
        default=[],
        help="name:key=value,... (keys: slot_projector, lr, lora_r, random_offsets, "
        "slot_scale, aux_weight, curriculum, lm_ratio, lm_after); repeatable; none = the "
        "default set",
    )
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-tokens", type=int, default=64, help="one segment: mem = this / rate")
    p.add_argument("--compression-rate", type=int, default=4)
    p.add_argument("--target-modules", default="q_proj,v_proj")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-texts", type=int, default=32)
    p.add_argument("--max-documents", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="the report (JSON)")
    p.add_argument("--plot", type=Path, help="curves of every candidate (PNG)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "promote",
        help="replace an adapter directory (e.g. the committed default) with a new adapter "
        "if its held-out teacher-forced AE loss, measured the same way, is lower",
    )
    p.add_argument("--adapter", type=Path, required=True, help="the new adapter directory")
    p.add_argument("--eval", type=Path, required=True, help="its `icae-train eval` report")
    p.add_argument("--into", type=Path, required=True, help="the adapter directory to replace")
    p.add_argument("--curve", type=Path, help="the run's loss curve, copied beside it")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("pretrain", help="autoencoding + language-modelling pretraining")
    _model_args(p)
    _train_args(p)
    p.add_argument("--corpus", type=Path, help="directory with train.jsonl")
    p.add_argument(
        "--tokens",
        type=Path,
        help="tokenized documents (.npz from `icae-train tokenize`) instead of --corpus",
    )
    p.add_argument("--max-documents", type=int, default=None)
    p.add_argument(
        "--init-adapter",
        type=Path,
        default=None,
        help="start from this adapter directory (its mem_size/rate/LoRA settings win) "
        "instead of a fresh one; with --slot-projector, an adapter without a projector gets "
        "one at the identity, so training starts from exactly what the adapter computes",
    )
    _icae_args(p, 32, 32, "q_proj,v_proj")
    p.add_argument(
        "--lm-ratio",
        type=float,
        default=0.5,
        help="share of LM examples (paper: about 0.4-0.6 of AE)",
    )
    p.add_argument(
        "--lm-token",
        action="store_true",
        help="put the LM special token after the slots for LM examples",
    )
    p.add_argument(
        "--max-segments",
        type=int,
        default=1,
        help="longest example, in segments of mem_size x rate tokens",
    )
    p.add_argument("--min-tokens", type=int, default=16)
    p.add_argument(
        "--min-lm-tokens",
        type=int,
        default=16,
        help="an LM example needs at least this many continuation tokens",
    )
    p.add_argument(
        "--leave-tokens-for-lm", type=int, default=8, help="first continuation tokens without loss"
    )
    p.add_argument(
        "--batch-windows",
        type=int,
        default=0,
        help="each micro-step is one batched forward of AE windows from random offsets (needs "
        "--lm-ratio 0): this many windows of mem_size x rate tokens, or with --max-segments S "
        "> 1, s whole segments (s drawn from 1..S) in N // s windows; 0: one example of any "
        "length",
    )
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "finetune", help="instruction fine-tuning on PwC-format JSONL (ANSWER layout)"
    )
    _model_args(p)
    _train_args(p)
    p.add_argument("--init-adapter", type=Path, required=True, help="pretrained adapter directory")
    p.add_argument("--data", type=Path, nargs="+", required=True)
    p.add_argument("--max-context-tokens", type=int, default=2048)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "eval",
        help="AE BLEU (sacrebleu) / exact prefix / token accuracy on held-out text; "
        "ROUGE-L (rouge-score) on PwC data",
    )
    _model_args(p)
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--heldout", type=Path, help="held-out corpus JSONL")
    p.add_argument("--passages", type=int, default=50)
    p.add_argument("--passage-tokens", type=_positive_int, default=128)
    p.add_argument(
        "--long-passages",
        type=int,
        default=0,
        help="also read back this many held-out passages of --long-passage-tokens "
        "teacher-forced (autoencode_long: several segments each); 0: skip",
    )
    p.add_argument("--long-passage-tokens", type=_positive_int, default=512)
    p.add_argument("--pwc", type=Path, nargs="*", help="PwC-format JSONL files")
    p.add_argument("--questions", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--refine-steps",
        type=int,
        default=0,
        help="also answer every question from its context's slots refined this many steps",
    )
    p.add_argument("--refine-lr", type=float, default=0.1)
    p.add_argument(
        "--refine-slots-per-segment",
        type=_positive_int,
        help="compress the contexts to refine with this many slots per segment (default: "
        "the adapter's mem_size), as CompressOptions.slots_per_segment",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "refine-eval",
        help="reconstruction of held-out passages after test-time slot refinement, "
        "against the number of steps (BLEU, exact, teacher-forced)",
    )
    _model_args(p)
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--heldout", type=Path, required=True, help="held-out corpus JSONL")
    p.add_argument("--passages", type=_positive_int, default=16)
    p.add_argument("--passage-tokens", type=_positive_int, default=128)
    p.add_argument(
        "--steps",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[0, 10, 25, 50, 100],
        help="comma-separated step counts; each is its own refinement",
    )
    p.add_argument("--lr", type=float, default=0.1, help="Adam's peak learning rate")
    p.add_argument(
        "--cold-start",
        action="store_true",
        help="start every slot at the mean slot instead of the encoder's slots",
    )
    p.add_argument(
        "--slots",
        type=_positive_int,
        default=None,
        help="slots per passage, the passage as one segment with the first N memory "
        "tokens (a higher rate than the adapter's); default: the adapter's layout",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.set_defaults(func=cmd_refine_eval)

    p = sub.add_parser("export", help="write the adapter of a run's latest checkpoint")
    p.add_argument("--model", required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--lora-dtype",
        choices=["f32", "bf16"],
        default="f32",
        help="bf16 halves the file, as the official release",
    )
    p.add_argument("--notes", default=None, help="replace the notes recorded in icae_config.json")
    p.set_defaults(func=cmd_export)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
