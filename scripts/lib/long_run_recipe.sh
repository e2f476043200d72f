# shellcheck shell=bash
# The pretraining recipe of the long run (issue 13): the recipe search's winner so far (see
# docs/training.md). scripts/long-run.sh (CPU) and scripts/train-gpu.sh (GPU, with a bigger
# batch appended: argparse keeps the last value) share it. AE only (lm_ratio 0), the slot
# projector, LoRA r16 on q and v at 1e-3, mem 32 / rate 4 on 128-token windows, each step
# one batched forward of 4 windows, bf16 autocast where the CPU has AMX-BF16 or AVX512-BF16
# (f32 elsewhere; on a GPU the model is bf16 anyway). Every example is a function of
# (seed, step), so the same flags continue the same run on any machine.
LONG_RUN_RECIPE=(--steps 20000 --checkpoint-every 10 --warmup-steps 20 --min-lr-ratio 0.1
  --lm-ratio 0 --max-segments 1 --batch-windows 4 --mem-size 32 --compression-rate 4
  --lora-r 16 --lora-alpha 32 --target-modules q_proj,v_proj --lr 1e-3 --memory-lr 1e-3
  --slot-projector --projector-lr 1e-3 --seed 0 --cpu-autocast auto)
