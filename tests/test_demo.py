"""The offline demo runs end to end (a few steps here; the full run is the README's main job)."""

import splice
from splice.cli import main
from splice.demo import shapes_dataset, train_tokenizer


def test_shapes_data_and_tokenizer():
    data = shapes_dataset(12, seed=3)
    assert all(image.size == (32, 32) and image.mode == "RGB" for image, _ in data)
    assert shapes_dataset(12, seed=3)[5][1] == data[5][1]  # generated deterministically
    tokenizer = train_tokenizer([caption for _, caption in data])
    ids = tokenizer(data[0][1]).input_ids
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == data[0][1]


def test_demo_cli_trains_saves_and_captions(tmp_path, capsys):
    main(
        ["demo", "--output-dir", str(tmp_path), "--steps", "3", "--batch-size", "4", "--n-train", "16", "--n-eval", "4"]
    )
    printed = capsys.readouterr().out
    assert "held-out exact match" in printed and "step    3" in printed
    model = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path)
    image, _ = shapes_dataset(1, seed=9)[0]
    (caption,) = model.caption([image], max_new_tokens=4)  # the processor was saved with the model
    assert isinstance(caption, str)
