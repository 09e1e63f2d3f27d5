"""Loaders and the collator: formats users bring, corrupt images, labels masked on padding and prompt."""

import json

import datasets
import pytest
import torch
import transformers as T
from PIL import Image

from splice.data import SpliceCollator, from_hf_dataset, load_coco_json, load_imagefolder, load_text_pairs


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    Image.new("L", (8, 8), 100).save(tmp_path / "b.png")  # greyscale: must come out RGB
    (tmp_path / "c.jpg").write_bytes(b"not an image at all")
    return tmp_path


@pytest.fixture
def tokenizer():
    words = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "a", "red", "square", "grey", "one", "similar", "images", "show"]
    vocab = {w: i for i, w in enumerate(words)}
    from tokenizers import Tokenizer, models, pre_tokenizers

    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )


def test_imagefolder_jsonl_and_csv_skip_corrupt_images(folder, caplog):
    rows = [{"file_name": "a.png", "text": "a red square"}, {"file_name": "b.png", "text": "a grey one"}]
    rows.append({"file_name": "c.jpg", "text": "broken"})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    records = load_imagefolder(folder)
    assert [r["text"] for r in records] == ["a red square", "a grey one"]
    assert "skipped 1 of 3" in caplog.text
    (folder / "metadata.jsonl").unlink()
    (folder / "metadata.csv").write_text("file_name,caption\na.png,a red square\nc.jpg,broken\n")
    assert [r["text"] for r in load_imagefolder(folder)] == ["a red square"]


def test_imagefolder_without_metadata_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.jsonl nor metadata.csv"):
        load_imagefolder(tmp_path)


def test_coco_and_karpathy_json(folder):
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [
            {"image_id": 1, "caption": "a red square"},
            {"image_id": 1, "caption": "red square"},
            {"image_id": 2, "caption": "a grey one"},
        ],
    }
    (folder / "coco.json").write_text(json.dumps(coco))
    records = load_coco_json(folder / "coco.json")
    assert records[0]["references"] == ["a red square", "red square"] and len(records) == 2
    karpathy = {
        "images": [
            {"filename": "a.png", "split": "train", "sentences": [{"raw": "a red square"}]},
            {"filename": "b.png", "split": "test", "sentences": [{"raw": "a grey one"}]},
            {"filename": "c.jpg", "split": "train", "sentences": [{"raw": "broken"}]},
        ]
    }
    (folder / "karpathy.json").write_text(json.dumps(karpathy))
    assert [r["text"] for r in load_coco_json(folder / "karpathy.json", split="train")] == ["a red square"]


def test_text_pairs_and_hf_dataset(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"source": "long text", "target": "short"}\n\n{"source": "x", "target": "y"}\n')
    assert load_text_pairs(path)[1] == {"source": "x", "text": "y", "references": ["y"]}
    path.write_text('{"src": "x"}\n')
    with pytest.raises(ValueError, match="pairs.jsonl:1: expected keys 'source' and 'target'"):
        load_text_pairs(path)
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))], "captions": [["one", "two"]]})
    (record,) = from_hf_dataset(ds, text_column="captions")
    assert record["text"] == "one" and record["references"] == ["one", "two"]


def test_collator_labels_mask_padding_and_end_with_eos(folder, tokenizer):
    processor = T.ViTImageProcessor(size={"height": 16, "width": 16})
    collator = SpliceCollator(tokenizer, processor, decoder_start_token_id=1, eos_token_id=2)
    records = [{"image": str(folder / "a.png"), "text": "a red square"}, {"image": str(folder / "b.png"), "text": "a"}]
    batch = collator(records)
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert batch["labels"].tolist() == [[4, 5, 6, 2], [4, 2, -100, -100]]
    truncated = SpliceCollator(tokenizer, processor, eos_token_id=2, max_target_length=2)(records)
    assert truncated["labels"].tolist() == [[4, 2], [4, 2]]


def test_collator_drops_images_that_went_bad(folder, tokenizer):
    collator = SpliceCollator(tokenizer, T.ViTImageProcessor(size={"height": 16, "width": 16}), eos_token_id=2)
    batch = collator([{"image": str(folder / "c.jpg"), "text": "a"}, {"image": str(folder / "a.png"), "text": "red"}])
    assert batch["pixel_values"].shape[0] == 1 and batch["labels"].tolist() == [[5, 2]] and collator.skipped == 1


def test_collator_prompt_is_fed_but_not_scored(tokenizer):
    collator = SpliceCollator(tokenizer, decoder_start_token_id=1, eos_token_id=2)
    records = [
        {"source": "x", "text": "a red square", "prompt": "similar images show"},
        {"source": "x", "text": "a grey one"},
    ]
    batch = collator(records)
    assert batch["decoder_input_ids"].tolist() == [[1, 9, 10, 11, 4, 5, 6], [1, 4, 7, 8, 0, 0, 0]]
    assert batch["decoder_attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 4, 5, 6, 2], [4, 7, 8, 2, -100, -100, -100]]
    assert torch.equal(batch["input_ids"], torch.tensor([[3], [3]]))  # "x" is unknown to this vocabulary


def test_prompted_targets_pad_with_eos_when_the_tokenizer_has_no_pad_token(tokenizer):
    tokenizer.pad_token = None  # as GPT-2's tokenizer
    collator = SpliceCollator(tokenizer, decoder_start_token_id=1, eos_token_id=2)
    batch = collator.targets([{"text": "a", "prompt": "similar images show"}, {"text": "a red"}])
    assert batch["decoder_input_ids"].tolist() == [[1, 9, 10, 11, 4], [1, 4, 5, 2, 2]]


def test_target_ids_are_what_targets_train_on_and_references_default_to_the_text(tokenizer):
    from splice.data import record_references

    collator = SpliceCollator(tokenizer, decoder_start_token_id=1, eos_token_id=2, max_target_length=3)
    assert collator.target_ids("a red square") == [4, 5, 2]  # cut to fit, its EOS kept
    assert collator.targets([{"text": "a red square"}])["labels"].tolist() == [[4, 5, 2]]
    assert record_references({"text": "a", "references": ["a", "b"]}) == ["a", "b"]
    assert record_references({"text": "a"}) == record_references({"text": "a", "references": []}) == ["a"]
