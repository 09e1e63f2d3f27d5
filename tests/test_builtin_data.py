"""Generated shapes and OCR data: deterministic, well-formed, and captions that describe what was drawn."""

import numpy as np
import pytest

from splice.data import builtin as builtin_data
from splice.data.builtin import COLOURS, DOMAINS, PLACES, make_dataset, to_hf_dataset, train_tokenizer


def _foreground(image):
    """Pixels far from the image's median colour (the background), as a boolean mask, and the pixels."""
    pixels = np.asarray(image, dtype=np.float32)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    return np.linalg.norm(pixels - background, axis=-1) > 80, pixels


@pytest.mark.parametrize("task", ["shapes", "ocr"])
def test_deterministic_rgb_and_sized(task):
    first, again, other = (make_dataset(task, 6, seed=seed) for seed in (1, 1, 2))
    assert [e.caption for e in first] == [e.caption for e in again]
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(first, again))
    assert [e.image.tobytes() for e in first] != [e.image.tobytes() for e in other]
    expected = (64, 64) if task == "shapes" else (160, 32)
    assert all(e.image.mode == "RGB" and e.image.size == expected for e in first)
    assert all(e.image.size == (48, 40) for e in make_dataset(task, 3, image_size=(48, 40)))


@pytest.mark.parametrize("domain", ["a", "b"])
def test_single_shape_captions_match_drawn_colour_and_place(domain):
    for example in make_dataset("shapes", 40, seed=3, domain=domain, max_shapes=1, vary_wording=False):
        words = example.caption.split()  # canonical: "a {colour} {shape} {on|at|in} the {place}"
        colour, place = words[1], words[-1]
        mask, pixels = _foreground(example.image)
        drawn = pixels[mask].mean(axis=0)
        nearest = min(COLOURS, key=lambda name: np.linalg.norm(drawn - COLOURS[name]))
        assert nearest == colour, example.caption
        ys, xs = np.nonzero(mask)
        (fx, fy), _ = PLACES[place]
        assert abs(xs.mean() / 64 - fx) < 1 / 6 and abs(ys.mean() / 64 - fy) < 1 / 6, example.caption


def test_shapes_have_five_distinct_references_and_varied_captions():
    examples = make_dataset("shapes", 30, seed=4)
    assert all(len(set(e.references)) == 5 and e.caption in e.references for e in examples)
    assert any(e.caption != e.references[0] for e in examples)  # wording varies
    assert all(e.caption == e.references[0] for e in make_dataset("shapes", 10, seed=4, vary_wording=False))
    assert any(" of " in e.caption or "above" in e.caption or "below" in e.caption for e in examples)  # pairs


def test_domains_have_disjoint_content_words():
    words = {
        d: {w for e in make_dataset("shapes", 60, seed=5, domain=d) for r in e.references for w in r.split()}
        for d in "ab"
    }
    content = {d: set(DOMAINS[d].colours) | set(DOMAINS[d].shapes) for d in "ab"}
    assert content["a"].isdisjoint(content["b"])
    assert content["a"] <= words["a"] and content["b"] <= words["b"]
    assert not words["a"] & content["b"] and not words["b"] & content["a"]


@pytest.mark.parametrize("fonts", ["system", "bundled"])
def test_ocr_images_have_ink_and_text_varies(fonts, monkeypatch):
    if fonts == "bundled":  # no TrueType font installed: Pillow's bundled scalable font
        monkeypatch.setattr(builtin_data, "find_fonts", lambda: ())
    examples = make_dataset("ocr", 40, seed=6)
    for example in examples:
        mask, _ = _foreground(example.image)
        # Ink strokes are connected; salt noise is isolated pixels, so count only pixels with an inked neighbour.
        neighbours = np.zeros_like(mask)
        neighbours[1:] |= mask[:-1]
        neighbours[:-1] |= mask[1:]
        neighbours[:, 1:] |= mask[:, :-1]
        neighbours[:, :-1] |= mask[:, 1:]
        assert (mask & neighbours).mean() > 0.005, example.caption
    assert len({e.caption for e in examples}) > 35
    assert all(1 <= len(e.caption.split()) <= 3 and e.references == [e.caption] for e in examples)


def test_char_tokenizer_round_trips_ocr_text(tmp_path):
    texts = [e.caption for e in make_dataset("ocr", 50, seed=7)]
    tokenizer = train_tokenizer(texts, kind="char")
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(4)] == ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    for text in texts + ["  Spaced  out , it's 42 . "]:
        ids = tokenizer(text).input_ids
        assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
        assert len(ids) == len(text) + 1
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    tokenizer.save_pretrained(tmp_path)
    loaded = type(tokenizer).from_pretrained(tmp_path)
    assert loaded(texts[0]).input_ids == tokenizer(texts[0]).input_ids
    assert loaded.decode(loaded(texts[1]).input_ids, skip_special_tokens=True) == texts[1]
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)


def test_word_tokenizer_round_trips_shapes_captions(tmp_path):
    captions = [r for e in make_dataset("shapes", 50, seed=8) for r in e.references]
    tokenizer = train_tokenizer(captions)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        0,
        1,
        2,
        3,
    )
    for caption in captions:
        ids = tokenizer(caption).input_ids
        assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
        assert len(ids) == len(caption.split()) + 1
        assert tokenizer.decode(ids, skip_special_tokens=True) == caption
    tokenizer.save_pretrained(tmp_path)
    loaded = type(tokenizer).from_pretrained(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.decode(loaded(captions[0]).input_ids, skip_special_tokens=True) == captions[0]
    with pytest.raises(ValueError):
        train_tokenizer(captions, kind="bpe")


def test_to_hf_dataset():
    examples = make_dataset("shapes", 4, seed=9)
    dataset = to_hf_dataset(examples)
    assert dataset.column_names == ["image", "caption", "references"] and len(dataset) == 4
    assert dataset[2]["image"].size == (64, 64) and dataset[2]["references"] == examples[2].references


def test_unknown_task_and_options_fail():
    with pytest.raises(ValueError):
        make_dataset("audio", 1)
    with pytest.raises(TypeError):
        make_dataset("ocr", 1, domain="a")
