"""Bad input gets one clear error, `DataError`, naming the file, the line, the field and the fix; nothing is lost.

One test per case found by trying (the comment says what happened before).
"""

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

from splice.data import (
    UNREADABLE_IMAGE_ERRORS,
    DataError,
    SpliceCollator,
    from_hf_dataset,
    load_coco_json,
    load_imagefolder,
    load_text_pairs,
    open_image,
)


@pytest.fixture
def folder(tmp_path):
    for name in "abcdefgh":
        Image.new("RGB", (4, 4), "red").save(tmp_path / f"{name}.png")
    return tmp_path


def _jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def _rows(n=8):
    return [{"file_name": f"{'abcdefgh'[i]}.png", "text": f"caption {i}"} for i in range(n)]


def test_missing_field_in_jsonl_row_names_file_line_and_field(folder):
    # Before: a bare KeyError: 'text'.
    rows = _rows()
    del rows[5]["text"]
    _jsonl(folder / "metadata.jsonl", rows)
    with pytest.raises(DataError, match=r"metadata\.jsonl:6: field 'text' is missing") as error:
        load_imagefolder(folder)
    assert "Fix:" in str(error.value) and error.value.line == 6 and error.value.field == "text"


def test_missing_field_in_csv_row_names_file_line_and_field(folder):
    # Before: the short row gave None, then AttributeError/KeyError; an unquoted comma silently cut the caption.
    lines = ["file_name,text"] + [f"{'abcdefgh'[i]}.png,caption {i}" for i in range(8)]
    lines[6] = "f.png"  # the 6th data row, line 7 of the file, lacks its caption
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"metadata\.csv:7: 1 values but the header has 2 columns.*Fix: quote"):
        load_imagefolder(folder)
    lines[6] = "f.png,a red, round ball"
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"metadata\.csv:7: 3 values but the header has 2 columns"):
        load_imagefolder(folder)


@pytest.mark.parametrize("bad", [None, 42, {"en": "x"}, ["ok", 3]])
def test_caption_of_the_wrong_type_names_the_value(folder, bad):
    # Before: AttributeError (`.strip()` on None / 42) or IndexError.
    rows = _rows()
    rows[2]["text"] = bad
    _jsonl(folder / "metadata.jsonl", rows)
    with pytest.raises(DataError, match=r"metadata\.jsonl:3: field 'text' (is null|must be)") as error:
        load_imagefolder(folder)
    assert "Fix:" in str(error.value)


def test_empty_captions_are_skipped_counted_and_named(folder, caplog):
    # Before: `[]` raised IndexError; "" trained on an empty target.
    rows = _rows()
    rows[1]["text"], rows[4]["text"], rows[6]["text"] = "", [], "   "
    _jsonl(folder / "metadata.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        records = load_imagefolder(folder)
    assert len(records) == 5
    assert "skipped 3 of 8 records with an empty target: line 2, line 5, line 7" in caplog.text


def test_all_captions_empty_fails_before_training(folder):
    # Before: an epoch trained, then a crash inside a metric.
    _jsonl(folder / "metadata.jsonl", [{"file_name": "a.png", "text": ""}, {"file_name": "b.png", "text": []}])
    with pytest.raises(DataError, match=r"metadata\.jsonl: every record's target is empty.*Fix:"):
        load_imagefolder(folder)
    (folder / "pairs.jsonl").write_text('{"source": "x", "target": ""}\n')
    with pytest.raises(DataError, match="every record's target is empty"):
        load_text_pairs(folder / "pairs.jsonl")


def test_non_utf8_bytes_name_the_file_offset_and_line(folder):
    # Before: UnicodeDecodeError naming no file.
    (folder / "metadata.csv").write_bytes(b"file_name,text\na.png,ok\nb.png,caf\xe9\n")
    with pytest.raises(DataError, match=r"metadata\.csv:3: not valid UTF-8 at byte offset 33.*Fix: re-save"):
        load_imagefolder(folder)
    (folder / "pairs.jsonl").write_bytes(b'{"source": "a", "target": "b"}\n{"source": "\xff", "target": "b"}\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: not valid UTF-8"):
        load_text_pairs(folder / "pairs.jsonl")


def test_malformed_json_reports_the_real_line(folder):
    # Before: JSONL line 7 reported as "line 1".
    rows = _rows()
    rows[6] = '{"file_name": "g.png", "text": "oops"'
    _jsonl(folder / "metadata.jsonl", rows)
    with pytest.raises(DataError, match=r"metadata\.jsonl:7: not valid JSON"):
        load_imagefolder(folder)
    (folder / "caps.json").write_text('{\n  "images": [\n    {"id": 1, "file_name": "a.png"},\n    oops\n  ]\n}\n')
    with pytest.raises(DataError, match=r"caps\.json:4: not valid JSON"):
        load_coco_json(folder / "caps.json")


def test_coco_and_karpathy_fields_are_named_by_json_path(folder):
    coco = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "caption": "x"}, {"id": 2}]}
    (folder / "caps.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"caps\.json, annotations\[1\]: field 'image_id' is missing"):
        load_coco_json(folder / "caps.json")
    karpathy = {"images": [{"filename": "a.png", "sentences": [{"raw": 5}], "split": "train"}]}
    (folder / "caps.json").write_text(json.dumps(karpathy))
    with pytest.raises(DataError, match=r"images\[0\]\.sentences\[0\]: field 'raw' must be a string"):
        load_coco_json(folder / "caps.json")
    with pytest.raises(DataError, match=r"no images in split 'val'.*\['train'\]"):
        load_coco_json(folder / "caps.json", split="val")


def test_text_pairs_and_datasets_check_types(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"source": "a", "target": "b"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: expected a JSON object, got list"):
        load_text_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(DataError, match=r"dataset, row 1: field 'text' must be"):
        from_hf_dataset([{"source": "a", "text": "b"}, {"source": "c", "text": 7}], source_column="source")


def test_unreadable_images_are_named_in_the_warning(folder, caplog):
    # Before: "skipped 2 of 8" without saying which.
    (folder / "c.png").write_bytes(b"not an image")
    (folder / "e.png").unlink()
    _jsonl(folder / "metadata.jsonl", _rows())
    with caplog.at_level(logging.WARNING):
        assert len(load_imagefolder(folder)) == 6
    assert "skipped 2 of 8 records with unreadable or corrupt images" in caplog.text
    assert "c.png" in caplog.text and "e.png" in caplog.text


def test_open_image_errors_name_the_file_and_stay_skippable(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"bad\.png.*cannot read the image") as error:
        open_image(tmp_path / "bad.png")
    assert isinstance(error.value, UNREADABLE_IMAGE_ERRORS)  # the collator and the CLI still skip it
    with pytest.raises(DataError, match="image file not found"):
        open_image(tmp_path / "missing.png")


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[BOS]", "[EOS]", "[UNK]", "a", "b"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")


def test_overlong_targets_are_truncated_to_the_decoder_positions_with_one_counted_warning(caplog):
    # Before: IndexError inside the decoder's position embeddings during training.
    decoder_config = T.BertConfig(
        vocab_size=6, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
        max_position_embeddings=8, is_decoder=True,
    )  # fmt: skip
    model = SimpleNamespace(
        config=SimpleNamespace(decoder=decoder_config, encoder=None, eos_token_id=2, decoder_start_token_id=1)
    )
    collator = SpliceCollator.for_model(model, _tokenizer())
    assert collator.max_positions == 8
    records = [{"source": "a", "text": "a " * 20}, {"source": "a", "text": "a b"}, {"source": "b", "text": "b " * 9}]
    with caplog.at_level(logging.WARNING):
        labels = collator.targets(records)["labels"]
        collator.targets(records)
    assert labels.shape == (3, 8) and labels[1, 3] == -100
    assert labels[0, -1] == 2 and labels[2, -1] == 2  # the cut targets keep their EOS
    assert caplog.text.count("Truncated 2 of 3 targets") == 1 and collator.truncated == 4
    decoder = T.BertLMHeadModel(decoder_config)
    decoder(input_ids=labels.clamp(min=0), labels=labels)  # fits the position embeddings: no IndexError


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    # Before: 99.6% of pixels clipped to 255.
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = np.asarray(open_image(tmp_path / "deep.png"))
    assert pixels.shape == (16, 16, 3)
    assert np.abs(pixels[..., 0].astype(int) - np.round(ramp / 257)).max() <= 1
    assert (pixels == 255).mean() < 0.01
    assert np.asarray(open_image(Image.fromarray(ramp.astype(np.int32), "I")))[..., 0].max() == 255


def test_transparency_is_composited_onto_white_and_modes_become_rgb():
    # Before: RGBA's alpha was dropped (a transparent red square came out solid red).
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    assert open_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    half = open_image(Image.new("LA", (2, 2), (0, 128))).getpixel((0, 0))
    assert all(120 <= c <= 135 for c in half)
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    assert open_image(palette).getpixel((0, 0)) == (10, 20, 30)
    palette.info["transparency"] = 0
    assert open_image(palette).getpixel((0, 0)) == (255, 255, 255)
    assert open_image(Image.new("CMYK", (2, 2), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    assert open_image(Image.new("L", (2, 2), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert open_image(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)
    assert open_image(Image.new("F", (2, 2), 0.5)).getpixel((0, 0)) == (128, 128, 128)


def test_collator_rejects_a_non_string_target():
    collator = SpliceCollator(_tokenizer(), eos_token_id=2)
    with pytest.raises(DataError, match="batch record 1: field 'text' must be a string"):
        collator.targets([{"text": "a"}, {"text": None}])
    assert torch.equal(collator.targets([{"text": "a"}])["labels"], torch.tensor([[4, 2]]))


def test_jsonl_lines_split_on_newlines_only(tmp_path):
    # Found by fuzzing: `str.splitlines` split a valid line at U+2028 or U+0085 in a caption, and mis-numbered lines.
    (tmp_path / "pairs.jsonl").write_text('{"source": "a\u2028b", "target": "c\x85d"}\r\n{"source": "x"}\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: expected keys"):
        load_text_pairs(tmp_path / "pairs.jsonl")
    (tmp_path / "pairs.jsonl").write_text('{"source": "a\u2028b", "target": "c"}\n')
    assert load_text_pairs(tmp_path / "pairs.jsonl")[0]["source"] == "a\u2028b"
