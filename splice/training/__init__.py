"""Training: `config` (TrainConfig), `pipeline` (data → model → `Seq2SeqTrainer` → evaluation), `freezing` (freeze
policies), `lora` (LoRA on the decoder), `adapters` (adapter-only checkpoints), `feature_cache` (a frozen encoder's
outputs on disk) and `metrics` (caption and OCR metrics).

Nothing is imported here, so `splice.training.config` stays cheap to import (the command line builds its flags from it).
"""
