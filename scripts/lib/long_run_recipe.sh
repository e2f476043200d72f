# shellcheck shell=bash disable=SC2034,SC2054
# The pretraining recipes of scripts/long-run.sh and scripts/train-gpu.sh (docs/training.md).
# Every example is a function of (seed, step), so the same flags continue the same run on
# any machine.
#
# What both recipes share: AE only (lm_ratio 0), 128-token windows, each step one batched
# forward of 4 windows, warm-up 20 steps then cosine over 20,000,
# a checkpoint every 10 steps, bf16 autocast where the CPU has AMX-BF16 or AVX512-BF16
# (f32 elsewhere; on a GPU the model is bf16 anyway).
LONG_RUN_SCHEDULE=(--steps 20000 --checkpoint-every 10 --warmup-steps 20 --min-lr-ratio 0.1
  --lm-ratio 0 --max-segments 1 --batch-windows 4 --cpu-autocast auto)
#
# CONTINUE_RECIPE continues an adapter (`--init-adapter`, whose mem_size / rate / LoRA shape
# wins): long-run.sh's default and train-gpu.sh's `continue` recipes. One lr, 1e-4, for
# LoRA, memory tokens and projector alike: the current default ended its GPU schedule at
# 1e-4 for all three, and side by side on the same windows from it (batches of 4)
# memory tokens and projector back at the schedule's 1e-3 cost 0.07-0.14 nats of training
# loss within 50 steps, and everything at 2e-4 stayed 0.03 behind 1e-4 over 280 steps
# (continuing an earlier step-8,000 adapter, LoRA 1e-4 also beat 2e-4 and 6e-4). No slot
# projector added to an adapter that has none (an identity projector gave no held-out gain),
# one segment a window (1-4 segments read 512-token passages better and
# 128-token ones worse). A new run from an adapter needs a seed that adapter was not trained
# on, or it repeats its windows: the seed comes last on the command line (argparse keeps the
# last value), see docs/training.md for the seeds each default was trained with.
CONTINUE_RECIPE=("${LONG_RUN_SCHEDULE[@]}" --lr 1e-4 --memory-lr 1e-4 --projector-lr 1e-4 --seed 3)
#
# LONG_RUN_RECIPE starts a fresh adapter: the recipe search's winner (scripts/long-run.sh
# --from none, and scripts/train-gpu.sh's fresh recipes, which append a bigger batch: argparse
# keeps the last value). Mem 32 / rate 4, LoRA r16 on q and v at 1e-3, the slot projector at
# 1e-3. With 32 windows a step for 1,941 steps on a GPU it made the current default.
LONG_RUN_RECIPE=("${LONG_RUN_SCHEDULE[@]}" --mem-size 32 --compression-rate 4 --lora-r 16
  --lora-alpha 32 --target-modules q_proj,v_proj --lr 1e-3 --slot-projector
  --memory-lr 1e-3 --projector-lr 1e-3 --seed 0)
