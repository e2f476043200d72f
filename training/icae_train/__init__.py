"""icae_train: pretraining and fine-tuning of ICAE adapters (official v2 module layout)."""
