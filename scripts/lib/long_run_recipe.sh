# shellcheck shell=bash
# The pretraining recipes of the long run (issue 13, see docs/training.md). Every example is a
# function of (seed, step), so the same flags continue the same run on any machine.
#
# What both recipes share: AE only (lm_ratio 0), 128-token windows, each step one batched
# forward of 4 windows, memory tokens at lr 1e-3, warm-up 20 steps then cosine over 20,000,
# a checkpoint every 10 steps, bf16 autocast where the CPU has AMX-BF16 or AVX512-BF16
# (f32 elsewhere; on a GPU the model is bf16 anyway).
LONG_RUN_SCHEDULE=(--steps 20000 --checkpoint-every 10 --warmup-steps 20 --min-lr-ratio 0.1
  --lm-ratio 0 --max-segments 1 --batch-windows 4 --memory-lr 1e-3 --cpu-autocast auto)
#
# CONTINUE_RECIPE continues an adapter (`--init-adapter`, whose mem_size / rate / LoRA shape
# wins): scripts/long-run.sh's default and train-gpu.sh's `continue` arm. It made the last
# 842 steps of the step-4,671 default (stop 25; stop 24 ran it with seed 2, stops 20-23 at
# LoRA lr 2e-4 with seeds 0 and 1). LoRA lr 1e-4 (side by side at stop 24 on the same
# windows it beat 2e-4 and 6e-4 on held-out loss), no slot projector added (an identity
# projector gave no held-out gain), one segment a window (at stop 25, 1-4 segments read
# 512-token passages better and 128-token ones worse). A new run from an adapter needs a
# seed that adapter was not trained on, or it repeats its windows: the current default was
# trained with LONG_RUN_RECIPE's seed 0 (on a GPU, stop 26), the step-4,671 one with seed 3.
CONTINUE_RECIPE=("${LONG_RUN_SCHEDULE[@]}" --lr 1e-4 --seed 3)
#
# LONG_RUN_RECIPE starts a fresh adapter: the recipe search's winner (scripts/long-run.sh
# --from none, and scripts/train-gpu.sh's fresh arms, which append a bigger batch: argparse
# keeps the last value). Mem 32 / rate 4, LoRA r16 on q and v at 1e-3, the slot projector at
# 1e-3. With 32 windows a step for 1,941 steps on a GPU it made the current default.
LONG_RUN_RECIPE=("${LONG_RUN_SCHEDULE[@]}" --mem-size 32 --compression-rate 4 --lora-r 16
  --lora-alpha 32 --target-modules q_proj,v_proj --lr 1e-3 --slot-projector
  --projector-lr 1e-3 --seed 0)
