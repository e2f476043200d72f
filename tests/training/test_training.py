"""icae_train: data semantics, the official loss layout, exact resume, export in the
official key layout that the Rust engine loads."""

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_icae_json
from icae_train.data import PretrainStream, read_tokens, write_tokens
from icae_train.evaluate import heldout_passages, other_context
from icae_train.metrics import (
    answer_found,
    corpus_bleu,
    prefix_match,
    rouge_l,
    token_accuracy,
)
from icae_train.model import (
    ICAE,
    AnswerInput,
    AutoencodeBatch,
    AutoencodeInput,
    IcaeConfig,
    LmInput,
    Objective,
)
from icae_train.train import cpu_has_native_bf16, use_cpu_autocast

OFFICIAL_KEY = re.compile(
    r"^icae\.base_model\.model\.model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.lora_[AB]\.default\.weight$"
)
TEXT = (
    "The memory slots of an in-context autoencoder hold a compressed copy of the text. "
    "A frozen decoder reads them like ordinary tokens and reconstructs, continues or answers. "
) * 6


def test_metrics_are_the_standard_ones_on_text():
    """sacrebleu BLEU (0-1) and rouge-score ROUGE-L on detokenized text; ids for the rest."""
    ref = "The cat sat on the mat, next to 3 dogs."
    assert corpus_bleu([ref], [ref]) == pytest.approx(1.0)
    # 13a tokenization: punctuation spacing does not matter, case does.
    assert corpus_bleu([ref], ["The cat sat on the mat , next to 3 dogs ."]) == pytest.approx(1.0)
    assert corpus_bleu([ref], ["the cat sat on the mat, next to 3 dogs."]) < 1.0
    assert corpus_bleu([ref], ["dog"]) == 0.0
    # A hypothesis that is a 4-gram-complete prefix: precision 1, brevity penalty only.
    half = "The cat sat on the mat"
    assert corpus_bleu([ref], [half]) == pytest.approx(math.exp(1 - 12 / 6), rel=1e-6)
    with pytest.raises(ValueError):
        corpus_bleu([ref, ref], [ref])
    # LCS("the cat sat", "the sat") = 2: P = 1, R = 2/3; lower-cased, punctuation dropped.
    assert rouge_l("the cat sat", "The sat!") == pytest.approx(0.8)
    assert rouge_l("a b", "c d") == 0.0
    # The reference's words in a row, whole words only, however long the answer.
    assert answer_found("ProcessPoolExecutor", "It is used by processpoolexecutor only.")
    assert answer_found("two CRTCs", "The screen is covered by two CRTCs.")
    assert not answer_found("two CRTCs", "two of the CRTCs")
    assert not answer_found("Redis", "Rediscover the docs")
    assert not answer_found("", "anything")
    assert prefix_match([1, 2, 3, 4], [1, 2, 9, 4]) == 0.5
    assert token_accuracy([[1, 2, 3, 4], [5, 6]], [[1, 2, 9, 4], [5]]) == pytest.approx(4 / 6)


def test_pretrain_stream_is_deterministic_and_bounded():
    docs = [list(range(i, i + 300)) for i in range(0, 3000, 300)]
    stream = PretrainStream(
        docs, seed=3, max_tokens=64, min_tokens=8, lm_ratio=0.5, min_lm_tokens=16
    )
    a = [stream.example(s, 0) for s in range(200)]
    b = [stream.example(s, 0) for s in range(200)]
    assert [(x.context, x.continuation) for x in a] == [(x.context, x.continuation) for x in b]
    assert all(8 <= len(x.context) <= 64 for x in a)
    lm = [x for x in a if x.is_lm]
    assert 0.3 < len(lm) / len(a) < 0.7
    for x in lm:
        # The continuation follows the context in the document.
        assert x.continuation[0] == x.context[-1] + 1 and len(x.continuation) >= 16


def test_window_batches_are_deterministic_full_windows():
    docs = [
        list(range(i, i + n)) for i, n in zip(range(0, 4000, 1000), (20, 64, 300, 900), strict=True)
    ]
    stream = PretrainStream(docs, seed=3, max_tokens=64, min_tokens=8, lm_ratio=0, min_lm_tokens=8)
    batches = [stream.window_batch(step, 0, 4) for step in range(50)]
    assert batches == [stream.window_batch(step, 0, 4) for step in range(50)]
    assert stream.window_batch(0, 0, 4) != stream.window_batch(0, 1, 4)
    windows = [w for batch in batches for w in batch]
    # Exactly one segment each, contiguous in one document; the 20-token document never used.
    assert all(len(w) == 64 and w == list(range(w[0], w[0] + 64)) for w in windows)
    assert all(w[0] >= 1000 for w in windows)
    assert len({w[0] for w in windows}) > 50, "offsets are random, not document starts"
    short = PretrainStream(
        [[1] * 20], seed=0, max_tokens=64, min_tokens=8, lm_ratio=0, min_lm_tokens=8
    )
    with pytest.raises(ValueError, match="64 tokens"):
        short.window_batch(0, 0, 2)


def test_tokenized_documents_round_trip_in_the_smallest_id_type(tmp_path):
    import numpy as np

    # Ids that fit 16 bits are stored as uint16 (half the bytes a GPU call carries); an
    # empty document keeps its place.
    small = [[0, 7, 49151], [], [65535, 1]]
    write_tokens(tmp_path / "small.npz", small)
    assert read_tokens(tmp_path / "small.npz") == small
    assert np.load(tmp_path / "small.npz")["ids"].dtype == np.uint16
    # A larger vocabulary keeps 32 bits rather than wrapping around.
    large = [[3, 65536], [2**32 - 1]]
    write_tokens(tmp_path / "large.npz", large)
    assert read_tokens(tmp_path / "large.npz") == large
    assert np.load(tmp_path / "large.npz")["ids"].dtype == np.uint32


def test_heldout_passages_name_the_length_no_document_has():
    with pytest.raises(ValueError, match="no held-out document has 64 tokens .* longest has 20"):
        heldout_passages([[1] * 20, [2] * 10], 64, 5, seed=0)
    assert [len(p) for p in heldout_passages([[1] * 20, list(range(100))], 64, 5, seed=0)] == [64]


def test_window_batches_mix_whole_segments_up_to_max_tokens():
    """With a segment length below max_tokens, each step draws s in 1..4 and gives
    max(1, 4 // s) windows of s whole segments; one-segment streams are unchanged by the
    option (a run continued with the same flags keeps its windows)."""
    docs = [list(range(i * 10_000, i * 10_000 + 2_000)) for i in range(5)]
    stream = PretrainStream(docs, seed=3, max_tokens=64, min_tokens=8, lm_ratio=0, min_lm_tokens=8)
    batches = [stream.window_batch(step, 0, 4, segment_tokens=16) for step in range(80)]
    assert batches == [stream.window_batch(step, 0, 4, segment_tokens=16) for step in range(80)]
    shapes = {(len(b), len(b[0])) for b in batches}
    assert shapes == {(4, 16), (2, 32), (1, 48), (1, 64)}
    for w in (w for b in batches for w in b):
        assert w == list(range(w[0], w[0] + len(w))), "a window is contiguous in one document"
    one_segment = PretrainStream(
        docs, seed=3, max_tokens=16, min_tokens=8, lm_ratio=0, min_lm_tokens=8
    )
    assert all(
        one_segment.window_batch(step, 0, 4, segment_tokens=16)
        == one_segment.window_batch(step, 0, 4)
        for step in range(20)
    )


@pytest.fixture(scope="module")
def small_icae(model_dir):
    torch.manual_seed(0)
    model = ICAE(
        str(model_dir), IcaeConfig(mem_size=8, lora_r=4, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():  # non-zero LoRA B so the encoder differs from the decoder
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def test_autoencode_loss_follows_the_official_labels(small_icae, model_dir):
    """Rebuild the official v2 AE example (prompt_answer_ids with mem placeholders, labels
    -100 on the prompt, loss on logits[:-1] vs labels[1:]) and compare."""
    from transformers import AutoTokenizer

    model = small_icae
    ids = AutoTokenizer.from_pretrained(str(model_dir)).encode(TEXT, add_special_tokens=False)[:40]
    k = model.config.mem_size
    with torch.no_grad():
        loss, n = model.autoencode_loss(ids)
        slots = model.compress(ids)
        eos = model.eos_ids[0]
        answer = ids + [eos]
        n_prompt = slots.shape[0] + 1
        embeds = torch.cat([slots, model.memory_token_embed.weight[k : k + 1], model.embed(answer)])
        labels = torch.tensor([-100] * n_prompt + answer)
        with model.icae.disable_adapter():
            logits = model.icae(inputs_embeds=embeds.unsqueeze(0)).logits[0]
        expected = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100)
    assert n == len(answer)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert slots.shape == (math.ceil(len(ids) / (k * 4)) * k, model.icae.config.hidden_size)


def test_objectives_keep_their_recorded_names_and_token_rows():
    """Run histories record an example's objective by value ("kind" in metrics.jsonl and the
    checkpoint), and its special token is row mem_size + token_row of memory_token_embed."""
    assert [(o.value, o.token_row) for o in Objective] == [("ae", 0), ("lm", 1), ("ft", 2)]
    assert AutoencodeInput([1]).objective is Objective.AUTOENCODE
    assert LmInput([1], [2], 0).objective is Objective.LM
    assert AnswerInput([1], [2], [3], [], []).objective is Objective.FINETUNE


def test_forward_dispatches_on_the_typed_example(small_icae):
    """Training calls the module (so DistributedDataParallel sees a forward pass): it gives
    the loss of the example's own objective."""
    model = small_icae
    ids = list(range(1000, 1040))
    cases = [
        (AutoencodeInput(ids), lambda: model.autoencode_loss(ids)),
        (
            AutoencodeBatch([ids[:16], ids[16:32]]),
            lambda: model.autoencode_batch_scores([ids[:16], ids[16:32]])[::2],
        ),
        (LmInput(ids[:24], ids[24:], 2), lambda: model.lm_loss(ids[:24], ids[24:], 2)),
        (
            AnswerInput(ids[:24], ids[24:30], ids[30:], [1, 2], [3]),
            lambda: model.finetune_loss(ids[:24], ids[24:30], ids[30:], [1, 2], [3]),
        ),
    ]
    with torch.no_grad():
        for example, direct in cases:
            (loss, n), (want_loss, want_n) = model(example), direct()
            assert n == want_n and torch.equal(loss, want_loss), example.objective
        with pytest.raises(TypeError):
            model(("ae", (ids,)))


def write_corpus(path: Path):
    path.mkdir(parents=True, exist_ok=True)
    docs = [
        TEXT + f" Document {i} adds its own words: " + " ".join(f"item{i}-{j}" for j in range(40))
        for i in range(6)
    ]
    (path / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


def pretrain(model_dir, corpus, run_dir, *extra):
    # fmt: off
    cmd = [
        "icae-train", "pretrain", "--model", str(model_dir), "--corpus", str(corpus),
        "--run-dir", str(run_dir), "--steps", "4", "--checkpoint-every", "1", "--mem-size", "8",
        "--lora-r", "4", "--min-tokens", "8", "--lm-ratio", "0.5", "--min-lm-tokens", "8",
        "--leave-tokens-for-lm", "2", "--warmup-steps", "2", "--lr", "1e-3", "--grad-accum", "2",
        "--device", "cpu", *extra,
    ]
    # fmt: on
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_exact_resume_and_export(model_dir, tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    pretrain(model_dir, corpus, straight)
    pretrain(model_dir, corpus, stopped, "--stop-after", "2")
    assert json.loads((stopped / "checkpoint" / "progress.json").read_text())["step"] == 2
    pretrain(model_dir, corpus, stopped)  # resumes at step 2

    def history(run):
        return [
            (h["step"], h["loss"], h["lr"])
            for h in json.loads((run / "checkpoint" / "progress.json").read_text())["history"]
        ]

    assert history(straight) == history(stopped)
    a = load_file(str(straight / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(stopped / "checkpoint" / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "loss.png").stat().st_size > 1000

    # The adapter: official keys, and the Rust engine loads it.
    adapter = straight / "adapter"
    tensors = load_file(str(adapter / "adapter.safetensors"))
    assert "memory_token_embed.weight" in tensors and tensors[
        "memory_token_embed.weight"
    ].shape == (11, 576)
    lora = [k for k in tensors if k != "memory_token_embed.weight"]
    assert lora and all(OFFICIAL_KEY.match(k) for k in lora), lora[:3]
    assert any(t.abs().max() > 0 for k, t in tensors.items() if "lora_B" in k), (
        "training must move LoRA B"
    )
    info = run_icae_json(
        "info", "--model", model_dir, "--adapter", adapter, "--device", "cpu", "--json"
    )
    config = json.loads((adapter / "icae_config.json").read_text())
    assert info["adapter"]["mem_size"] == 8 and info["adapter"]["trained"] is True
    assert config["base_model"]["fingerprint"] == info["base_fingerprint"]


def test_batched_windows_resume_exactly(model_dir, tmp_path):
    """`pretrain --batch-windows`: each step one batched forward of full one-segment windows;
    a run stopped and resumed gives the same tensors and losses as one in one go."""
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    batched = ("--batch-windows", "2", "--lm-ratio", "0", "--grad-accum", "1")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    pretrain(model_dir, corpus, straight, *batched, "--no-export")
    pretrain(model_dir, corpus, stopped, *batched, "--no-export", "--stop-after", "3")
    pretrain(model_dir, corpus, stopped, *batched, "--no-export")
    runs = [
        json.loads((r / "checkpoint" / "progress.json").read_text()) for r in (straight, stopped)
    ]
    assert [h["loss"] for h in runs[0]["history"]] == [h["loss"] for h in runs[1]["history"]]
    # 2 windows of 8 slots x 4 = 32 tokens, plus EOS, per step.
    assert {h["tokens"] for h in runs[0]["history"]} == {2 * 33}
    a = load_file(str(straight / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(stopped / "checkpoint" / "trainable.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batched_windows_of_several_segments_train(model_dir, tmp_path):
    """`pretrain --batch-windows 2 --max-segments 2`: a step is 2 one-segment windows or
    one window of 2 segments (64 tokens plus EOS), both kinds appear, and the run exports."""
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    run = tmp_path / "run"
    flags = ("--batch-windows", "2", "--max-segments", "2", "--lm-ratio", "0", "--steps", "8")
    pretrain(model_dir, corpus, run, *flags, "--grad-accum", "1")
    history = json.loads((run / "checkpoint" / "progress.json").read_text())["history"]
    assert {h["tokens"] for h in history} == {2 * 33, 65}
    assert all(math.isfinite(h["loss"]) for h in history)
    assert (run / "adapter" / "adapter.safetensors").is_file()


def test_a_warm_start_adds_a_projector_at_the_identity(model_dir, tmp_path):
    """`pretrain --init-adapter A --slot-projector`, A without a projector: the first step's
    loss is exactly A's (the projector starts at the identity), the projector then trains,
    and the exported adapter holds it. Without --slot-projector the adapter stays as it is."""
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    batched = ("--batch-windows", "2", "--lm-ratio", "0", "--grad-accum", "1", "--steps", "2")
    pretrain(model_dir, corpus, tmp_path / "a", *batched)
    init = ("--init-adapter", str(tmp_path / "a" / "adapter"))
    pretrain(model_dir, corpus, tmp_path / "plain", *batched, *init)
    pretrain(model_dir, corpus, tmp_path / "projected", *batched, *init, "--slot-projector")

    def losses(run):
        history = json.loads((run / "checkpoint" / "progress.json").read_text())["history"]
        return [h["loss"] for h in history]

    plain, projected = losses(tmp_path / "plain"), losses(tmp_path / "projected")
    assert plain[0] == projected[0], (plain, projected)
    assert plain[1] != projected[1], "the projector changed nothing after a step"
    tensors = load_file(str(tmp_path / "projected" / "adapter" / "adapter.safetensors"))
    weight = tensors["slot_projector.weight"]
    assert weight.shape == (576, 576) and not torch.equal(weight, torch.eye(576))
    configs = [
        json.loads((tmp_path / run / "adapter" / "icae_config.json").read_text())
        for run in ("plain", "projected")
    ]
    assert [c.get("slot_projector", False) for c in configs] == [False, True]
    assert all(f"continued from the adapter in {tmp_path / 'a'}" in c["notes"] for c in configs)
    assert "slot_projector.weight" not in load_file(
        str(tmp_path / "plain" / "adapter" / "adapter.safetensors")
    )


def test_cpu_bf16_autocast_is_close_to_f32_at_the_same_weights(model_dir, tmp_path):
    """`--cpu-autocast on`: the forward runs in bf16 (weights and optimizer stay f32). The
    first step's loss, same weights and windows, is near the f32 one and not equal to it
    (the autocast really is on). Later steps diverge as any two runs do: an untrained AE is
    sensitive to its slots (docs/training.md compares three steps of the real run)."""
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    one_step = ("--steps", "1", "--batch-windows", "2", "--lm-ratio", "0", "--grad-accum", "1")
    f32, bf16 = tmp_path / "f32", tmp_path / "bf16"
    pretrain(model_dir, corpus, f32, *one_step, "--no-export")
    pretrain(model_dir, corpus, bf16, *one_step, "--no-export", "--cpu-autocast", "on")
    runs = [json.loads((r / "run.json").read_text()) for r in (f32, bf16)]
    assert [r["train"]["cpu_autocast"] for r in runs] == [False, True]
    (full,), (half,) = [
        [h["loss"] for h in json.loads((r / "checkpoint" / "progress.json").read_text())["history"]]
        for r in (f32, bf16)
    ]
    assert full != half and abs(full - half) < 0.1 * full, (full, half)


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16("flags\t\t: fpu avx512f avx512_bf16\n")
    assert not cpu_has_native_bf16("flags\t\t: fpu sse2 avx2 fma\nbugs\t\t: amx_bf16\n")
    assert not cpu_has_native_bf16("")


def test_cpu_autocast_mode_is_resolved_per_device():
    def unread():
        raise AssertionError("the CPU flags were read although the mode does not need them")

    assert use_cpu_autocast("on", "cpu", unread)
    assert not use_cpu_autocast("off", "cpu", unread)
    assert use_cpu_autocast("auto", "cpu", lambda: True)
    assert not use_cpu_autocast("auto", "cpu", lambda: False)
    for mode in ("on", "auto"):
        assert not use_cpu_autocast(mode, "cuda:0", unread)


def test_batched_windows_refuse_lm_examples(model_dir, tmp_path):
    write_corpus(tmp_path / "corpus")
    cmd = ["icae-train", "pretrain", "--model", str(model_dir), "--corpus",
           str(tmp_path / "corpus"), "--run-dir", str(tmp_path / "run"), "--steps", "1",
           "--batch-windows", "2", "--lm-ratio", "0.2"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--lm-ratio 0 (given 0.2)" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_the_first_target_weight_is_refused_where_it_cannot_apply(model_dir, tmp_path):
    write_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    base = ["icae-train", "pretrain", "--model", str(model_dir), "--corpus",
            str(tmp_path / "corpus"), "--run-dir", str(run), "--steps", "1"]  # fmt: skip
    for extra, message in [
        (["--first-target-weight", "4"], "it needs --batch-windows"),
        (["--first-target-weight", "0", "--batch-windows", "2", "--lm-ratio", "0"], "> 0 (given 0"),
    ]:
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-500:]
    assert not run.exists()


def test_eval_refuses_passage_lengths_before_loading_the_model(model_dir, tmp_path):
    """A passage length no held-out document reaches, or one that is not positive, is an
    error that names it; the adapter given does not exist, so a refusal that mentions it
    would mean the model was loaded first."""
    write_corpus(tmp_path / "corpus")
    heldout = tmp_path / "corpus" / "train.jsonl"
    base = ["icae-train", "eval", "--model", str(model_dir), "--adapter",
            str(tmp_path / "missing"), "--heldout", str(heldout)]  # fmt: skip
    long = ["--long-passages", "2", "--long-passage-tokens", "100000"]
    too_long = subprocess.run([*base, *long], capture_output=True, text=True, timeout=300)
    assert too_long.returncode != 0
    assert "no held-out document has 100000 tokens" in too_long.stderr, too_long.stderr[-2000:]
    assert "missing" not in too_long.stderr
    zero = subprocess.run([*base, "--passage-tokens", "0"], capture_output=True, text=True)
    assert zero.returncode == 2 and "must be a positive number of tokens, got 0" in zero.stderr


def test_finetune_and_eval_from_a_pretrained_adapter(model_dir, tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    pretrained = tmp_path / "pretrain"
    pretrain(model_dir, corpus, pretrained)
    qa = tmp_path / "qa.jsonl"
    records = [
        {
            "input": TEXT,
            "prompt": "What do memory slots hold?",
            "answer": "a compressed copy of the text",
        },
        {"input": TEXT, "prompt": "Who reads the slots?", "answer": "a frozen decoder"},
        {
            "input": "Redis keeps the slots of each document under its tenant's key.",
            "prompt": "Where are the slots kept?",
            "answer": "in Redis",
        },
    ]
    qa.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = tmp_path / "finetune"
    # fmt: off
    cmd = [
        "icae-train", "finetune", "--model", str(model_dir),
        "--init-adapter", str(pretrained / "adapter"), "--data", str(qa), "--run-dir", str(run),
        "--steps", "2", "--checkpoint-every", "1", "--lr", "1e-3", "--warmup-steps", "1",
        "--device", "cpu",
    ]
    # fmt: on
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((run / "checkpoint" / "progress.json").read_text())["history"]
    assert [h["kind"] for h in history] == ["ft", "ft"] and all(
        math.isfinite(h["loss"]) for h in history
    )
    before = load_file(str(pretrained / "adapter" / "adapter.safetensors"))
    after = load_file(str(run / "adapter" / "adapter.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before), (
        "fine-tuning must change the adapter"
    )

    out = tmp_path / "eval.json"
    # fmt: off
    cmd = [
        "icae-train", "eval", "--model", str(model_dir), "--adapter", str(run / "adapter"),
        "--device", "cpu", "--pwc", str(qa), "--questions", "3", "--max-new-tokens", "8",
        "--heldout", str(corpus / "train.jsonl"), "--passages", "2", "--passage-tokens", "12",
        "--long-passages", "2", "--long-passage-tokens", "64", "--out", str(out),
        "--refine-steps", "1",
    ]
    # fmt: on
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    autoencode = json.loads(out.read_text())["autoencode"]
    assert autoencode["passages"] == 2 and autoencode["slots"] == 8
    assert all(0.0 <= autoencode[k] <= 1.0 for k in ("bleu4", "exact_prefix", "token_accuracy"))
    forced = autoencode["teacher_forced"]
    assert 0.0 <= forced["accuracy"] <= 1.0 and forced["loss"] > 0
    assert forced["slot_gain"] == pytest.approx(forced["loss_other_slots"] - forced["loss"])
    first = autoencode["first_token"]
    assert 0.0 <= first["accuracy"] <= 1.0 and sum(first["argmax_counts"].values()) == 2
    assert 0.0 < first["probability"] < 1.0 and 0.0 < first["probability_other_slots"] < 1.0
    assert isinstance(first["argmax_without_slots"], str)
    marked = first["after_marker"]  # the passages again, after the tokenizer's BOS
    assert marked["marker"] == "<|im_start|>" and 0.0 <= marked["accuracy"] <= 1.0
    assert 0.0 < marked["probability"] < 1.0 and 0.0 < marked["probability_other_slots"] < 1.0
    assert marked["probability"] != first["probability"]
    # 64 tokens are two segments of 8 slots each (mem 8 x rate 4 = 32 tokens a segment).
    long = json.loads(out.read_text())["autoencode_long"]
    assert (long["passages"], long["passage_tokens"], long["slots"]) == (2, 64, 16)
    assert long["teacher_forced"]["loss"] > 0 and "slot_gain" in long["teacher_forced"]
    report = json.loads(out.read_text())["answers"]
    assert report["questions"] == 3 and 0.0 <= report["rouge_l_slots"] <= 1.0
    assert all("from_slots" in a and "from_full_context" in a for a in report["answers"])
    # Every question is also answered from another context's slots (the control).
    assert all("from_other_slots" in a for a in report["answers"])
    assert 0.0 <= report["rouge_l_other_slots"] <= 1.0
    for measure in ("found_slots", "found_full_context", "found_other_slots"):
        assert report[measure] == sum(a[measure] for a in report["answers"]) / 3
    # --refine-steps: every question is also answered from its context's refined slots.
    assert report["refine_steps"] == 1 and 0.0 <= report["rouge_l_refined_slots"] <= 1.0
    assert all("from_refined_slots" in a for a in report["answers"])
    assert (
        report["found_refined_slots"]
        == sum(a["found_refined_slots"] for a in report["answers"]) / 3
    )


def test_answer_control_reads_another_context():
    same, other = {"input": "a"}, {"input": "b"}
    assert other_context([same, same, other], 0) == 2
    assert other_context([same, same, other], 1) == 2
    assert other_context([same, same, other], 2) == 0  # cyclic
    # PwC's questions on one article have no other context: no control.
    assert other_context([same, same], 0) is None
    assert other_context([same], 0) is None


def test_data_parallel_run_matches_one_process(model_dir, tmp_path):
    """Two processes under torchrun (gloo on CPU, accelerate's DDP) with one example each
    compute the same step as one process accumulating both examples."""
    import os

    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same reduction order in both runs
    # fmt: off
    flags = [
        "--model", str(model_dir), "--corpus", str(corpus), "--steps", "1",
        "--checkpoint-every", "1", "--mem-size", "8", "--lora-r", "4", "--min-tokens", "8",
        "--lm-ratio", "0.5", "--min-lm-tokens", "8", "--warmup-steps", "1", "--device", "cpu",
    ]
    single = subprocess.run(
        ["icae-train", "pretrain", *flags, "--run-dir", str(tmp_path / "one"), "--grad-accum", "2"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    # fmt: on
    assert single.returncode == 0, single.stderr[-3000:]
    # fmt: off
    multi = subprocess.run(
        ["torchrun", "--nproc_per_node", "2", "-m", "icae_train.cli", "pretrain", *flags,
         "--run-dir", str(tmp_path / "two"), "--grad-accum", "1"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    # fmt: on
    assert multi.returncode == 0, multi.stderr[-3000:]
    [a] = json.loads((tmp_path / "one" / "checkpoint" / "progress.json").read_text())["history"]
    [b] = json.loads((tmp_path / "two" / "checkpoint" / "progress.json").read_text())["history"]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    assert a["tokens"] == b["tokens"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    # The gradient norm is taken after the all-reduce: one process's example alone differs.
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
