"""Training: `config` (TrainConfig, data checks), `pipeline` (`build_run` → `run_training`: data → model →
`Seq2SeqTrainer` → evaluation), `smallcap` (the SmallCap preset's steps: retrieval prompts, datastore), `freezing`
(freeze policies), `lora` (LoRA on the decoder), `adapters` (adapter-only checkpoints, `TrainingSetup`),
`feature_cache` (a frozen encoder's outputs on disk), `trainer` (exact resume), `epoch_log` (one line per epoch) and
`metrics` (caption and OCR metrics).

Nothing is imported here, so `splice.training.config` stays cheap to import (the command line builds its flags from it).
"""
