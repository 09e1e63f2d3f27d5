"""`splice train` / `caption` / `eval`: a few steps on a handful of generated samples, in-process and distributed."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from PIL import Image
from tiny import cli_decoder, cli_encoder

import splice
from splice.cli import main

ENCODER, DECODER = cli_encoder(), cli_decoder()
SMALL = ["--n-train", "16", "--n-eval", "4", "--batch-size", "8", "--image-size", "32", "--logging-steps", "1"]


def run_train(tmp_path, *extra):
    flags = ["train", "--encoder", json.dumps(ENCODER), "--decoder", json.dumps(DECODER), *SMALL]
    main(flags + ["--output-dir", str(tmp_path), *extra])
    return json.loads((tmp_path / "eval_metrics.json").read_text())


def test_train_flags_save_model_processor_metrics_and_logs(tmp_path, capsys):
    metrics = run_train(tmp_path, "--epochs", "1")
    assert {"bleu4", "rouge_l", "cider"} <= metrics.keys()
    assert '"cider"' in capsys.readouterr().out  # the metrics are printed
    model = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path)
    assert isinstance(model.processor, splice.SpliceProcessor)
    # max_new_tokens comes from the longest training target, not transformers' max_length=20.
    tokenizer = model.processor.tokenizer
    from splice.training.pipeline import load_records

    longest = max(len(tokenizer(r["text"]).input_ids) for r in load_records("builtin:shapes", "caption", 16, 0, 32))
    assert model.generation_config.max_new_tokens == longest
    # Evaluation does not leave transformers' defaults (max_length=20) in the saved generation settings.
    assert "max_length" not in json.loads((tmp_path / "generation_config.json").read_text())
    assert list((tmp_path / "runs").iterdir())  # TensorBoard event files
    assert (tmp_path / "checkpoint-2").is_dir()


def test_yaml_config_and_resume(tmp_path):
    config = {"encoder": ENCODER, "decoder": DECODER, "data": "builtin:shapes", "n_train": 16, "n_eval": 4}
    config |= {"batch_size": 8, "image_size": 32, "epochs": 1, "output_dir": str(tmp_path)}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["train", "--config", str(path)])
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    main(["train", "--config", str(path), "--epochs", "2", "--resume"])  # flags override the file
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["log_history"][0]["step"] <= 2  # history carried over
    path.write_text(yaml.safe_dump(config | {"learning_rte": 1.0}))
    with pytest.raises(ValueError, match="unknown keys \\['learning_rte'\\]"):
        main(["train", "--config", str(path)])


def test_frozen_training_uses_the_feature_cache(tmp_path):
    metrics = run_train(tmp_path, "--epochs", "1", "--freeze", "encoder+decoder")
    cache = list((tmp_path / "feature-cache").iterdir())
    assert len(cache) == 1 and (cache[0] / "features.npy").exists()
    model = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path)
    cross = sum(p.numel() for n, p in model.named_parameters() if "crossattention" in n or "ln_cross_attn" in n)
    assert metrics["trainable_parameters"] == cross


def test_caption_and_eval_commands(tmp_path, capsys):
    run_train(tmp_path / "model", "--epochs", "1")
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 40), "red").save(images / "a.png")
    Image.new("RGB", (40, 40), "blue").save(images / "sub" / "b.jpg")
    (images / "broken.png").write_bytes(b"no image")
    capsys.readouterr()
    out = tmp_path / "captions.jsonl"
    main(["caption", str(tmp_path / "model"), str(images), "--format", "jsonl", "--output", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [os.path.basename(line["file"]) for line in lines] == ["a.png", "b.jpg"]
    assert all(isinstance(line["caption"], str) for line in lines)
    err = capsys.readouterr().err
    assert "skipped 1 unreadable" in err and "broken.png" in err  # skipped files are named
    main(["caption", str(tmp_path / "model"), str(images / "*.png")])
    assert capsys.readouterr().out.startswith(str(images / "a.png") + "\t")
    main(["eval", str(tmp_path / "model"), "builtin:shapes", "--n", "4"])
    printed = json.loads(capsys.readouterr().out)
    assert {"bleu4", "cider", "rouge_l"} <= printed.keys()


def test_ocr_task_uses_a_character_tokenizer_and_ocr_metrics(tmp_path):
    encoder = ENCODER | {"image_size": [16, 64]}
    main(
        ["train", "--encoder", json.dumps(encoder), "--decoder", json.dumps(DECODER), "--data", "builtin:ocr"]
        + ["--n-train", "8", "--n-eval", "4", "--batch-size", "8", "--epochs", "1", "--output-dir", str(tmp_path)]
    )
    metrics = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert {"cer", "wer", "exact_match"} <= metrics.keys()
    tokenizer = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path).processor.tokenizer
    assert tokenizer.decode(tokenizer("Ab 12").input_ids, skip_special_tokens=True) == "Ab 12"


@pytest.mark.slow  # two launched processes per run (`-m slow`, .ci/run's own step)
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_distributed_two_processes_on_cpu(tmp_path, launcher):
    flags = ["train", "--encoder", json.dumps(ENCODER), "--decoder", json.dumps(DECODER), *SMALL]
    flags += ["--epochs", "1", "--output-dir", str(tmp_path)]
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "splice.cli", *flags]
    else:
        # `--cpu` would run one process; the distributed launcher on a machine without GPUs trains on CPU (gloo).
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
        command += ["-m", "splice.cli", *flags]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1  # 16 samples / (8 per process x 2 processes)
    assert (tmp_path / "model.safetensors").exists()


def test_smallcap_prompts_are_new_records_and_the_originals_stay(tmp_path):
    from splice.training import smallcap
    from splice.training.config import TrainConfig

    class Prompts:
        def prompts(self, retrieved, count):
            return ["This image shows "] * count

    records, eval_records = [{"image": "a.png", "text": "a"}], [{"image": "b.png", "text": "b"}]
    config = TrainConfig(preset="smallcap", retrieval_k=0, output_dir=str(tmp_path))
    prompted, eval_prompted, datastore = smallcap.add_retrieval_prompts(Prompts(), records, eval_records, config, None)
    assert prompted == [{"image": "a.png", "text": "a", "retrieved": [], "prompt": "This image shows "}]
    assert eval_prompted[0]["prompt"] == "This image shows " and datastore is None
    assert records == [{"image": "a.png", "text": "a"}] and eval_records == [{"image": "b.png", "text": "b"}]


def test_one_line_per_epoch_on_one_trainer_only(tmp_path, capsys):
    import torch
    from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerState, TrainingArguments

    from splice.training.epoch_log import EpochLogCallback, ProgressBarsCallback, log_one_line_per_epoch

    def trainer(**kwargs):
        args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **kwargs)
        return Trainer(model=torch.nn.Linear(2, 2), args=args)

    on_log = ProgressCallback.on_log
    # `disable_tqdm` given both ways: its default follows the logging level, which earlier tests may have changed.
    quiet, other, plain = trainer(disable_tqdm=False), trainer(disable_tqdm=False), trainer(disable_tqdm=True)
    log_one_line_per_epoch(quiet, epochs=2)
    log_one_line_per_epoch(plain, epochs=2)
    kinds = {type(c) for c in quiet.callback_handler.callbacks}
    assert {ProgressBarsCallback, EpochLogCallback} <= kinds and ProgressCallback not in kinds
    assert ProgressCallback in {type(c) for c in other.callback_handler.callbacks}  # other trainers keep theirs
    plain_kinds = {type(c) for c in plain.callback_handler.callbacks}
    assert EpochLogCallback in plain_kinds and not plain_kinds & {PrinterCallback, ProgressBarsCallback}
    assert ProgressCallback.on_log is on_log  # the class is untouched

    callback = next(c for c in quiet.callback_handler.callbacks if isinstance(c, EpochLogCallback))
    state = TrainerState(epoch=1.0)
    callback.on_log(None, state, None, logs={"loss": 1.5})
    callback.on_log(None, state, None, logs={"eval_cer_1ref": 0.25, "eval_loss": 2.0})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch 1/2: train loss 1.5000, eval cer 0.2500 (")


def test_training_setup_is_read_from_the_model_not_stored_on_it():
    from tiny import gpt2_config, vit_config
    from transformers import GPT2LMHeadModel, ViTModel

    from splice.training.adapters import TrainingSetup
    from splice.training.freezing import apply_freeze_policy

    decoder = GPT2LMHeadModel(gpt2_config(add_cross_attention=True, is_decoder=True))
    model = splice.VisionEncoderDecoderModel.from_encoder_decoder_pretrained(
        encoder_model=ViTModel(vit_config()), decoder_model=decoder, conditioning="native"
    )
    attributes = set(vars(model))
    assert TrainingSetup.of(model) == TrainingSetup(freeze="none", lora=None)
    apply_freeze_policy(model, "encoder", verbose=False)
    assert TrainingSetup.of(model) == TrainingSetup(freeze="encoder", lora=None)
    next(model.decoder.parameters()).requires_grad_(False)  # a hand-picked set: no policy
    assert TrainingSetup.of(model).freeze is None
    assert set(vars(model)) == attributes
