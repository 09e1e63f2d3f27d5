"""The shapes demo's slot metric: captions parsed back into (colour, shape, place/relation) slots and scored."""

import re

import numpy as np
import pytest

from splice.data.builtin import COLOURS, DOMAINS, ShapeSlots, make_dataset
from splice.data.slots import parse_shapes_caption, slot_metrics
from splice.training.pipeline import load_records

LEFT_PAIR = ShapeSlots((("green", "triangle"), ("blue", "circle")), "to the left of")


@pytest.mark.parametrize("domain", ["a", "b"])
def test_every_reference_parses_to_the_slots_the_generator_drew(domain):
    examples = make_dataset("shapes", 60, seed=3, domain=domain)
    assert {len(e.slots.objects) for e in examples} == {1, 2}
    for example in examples:
        for reference in example.references:
            assert parse_shapes_caption(reference) == example.slots, reference


@pytest.mark.parametrize(
    "caption",
    [
        "a green triangle to the left of a blue circle",
        "we see a blue circle to the right of a green triangle",
        "the green triangle is to the left of the blue circle",
        "two shapes: a green triangle to the left of a blue circle",
    ],
)
def test_phrasings_of_one_scene_have_one_canonical_form(caption):
    assert parse_shapes_caption(caption) == LEFT_PAIR


def test_captions_say_an_before_a_vowel_and_parse_either_article():
    """ "an orange star", never "a orange star", in every caption the generator writes; the parser reads both."""
    examples = make_dataset("shapes", 200, seed=5, domain="a")
    captions = [c for e in examples for c in (e.caption, *e.references)]
    assert any(" an orange " in f" {c} " for c in captions)  # the domain has an orange: the check bites
    assert not [c for c in captions if re.search(r"\ba [aeiou]", c)]
    assert parse_shapes_caption("a orange star above an orange circle") == ShapeSlots(
        (("orange", "star"), ("orange", "circle")), "above"
    )


def test_single_shape_places_and_unparseable_captions():
    assert parse_shapes_caption("left: a red star") == ShapeSlots((("red", "star"),), "left")
    assert parse_shapes_caption("In the centre there is a red star") == ShapeSlots((("red", "star"),), "centre")
    assert parse_shapes_caption("a red star somewhere") is None
    assert parse_shapes_caption("") is None


def test_slot_metrics_count_each_wrong_slot():
    single = ShapeSlots((("red", "star"),), "left")
    predictions = [
        "we see a blue circle to the right of a green triangle",  # all right (converse phrasing)
        "a green triangle to the left of a blue triangle",  # one shape wrong
        "a red star on the right",  # place wrong
        "a red square on the left",  # shape wrong
        "a red",  # unparseable: every slot wrong
    ]
    truths = [LEFT_PAIR, LEFT_PAIR, single, single, single]
    metrics = slot_metrics(predictions, truths)
    # 7 shapes: colours all right but the unparsed one's; shapes wrong in rows 2, 4 and 5.
    assert metrics == {
        "slot_colour": 6 / 7,
        "slot_shape": 4 / 7,
        "slot_where": 3 / 5,
        "slot_sample": 1 / 5,
        "slot_parsed": 4 / 5,
    }


def test_slot_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions but 1 true slots"):
        slot_metrics(["a", "b"], [LEFT_PAIR])


def test_every_triangle_scores_chance_on_shape():
    """The issue's failure: right colours and places, every shape a triangle; n-gram-like frames, shape slot ~0.25."""
    examples = make_dataset("shapes", 200, seed=4)
    triangles = []
    for example in examples:
        words = example.references[0].split()
        for colour, _ in example.slots.objects:
            words[words.index(colour) + 1] = "triangle"
        triangles.append(" ".join(words))
    metrics = slot_metrics(triangles, [e.slots for e in examples])
    assert metrics["slot_colour"] == metrics["slot_where"] == 1.0
    assert 0.15 < metrics["slot_shape"] < 0.35 and metrics["slot_sample"] < 0.3


@pytest.mark.parametrize("domain", ["a", "b"])
def test_a_pairs_slots_say_where_its_shapes_are_drawn(domain):
    """The labels behind "to the left of" / "above": the first shape's pixels lie left of (above) the second's."""
    pairs = [e for e in make_dataset("shapes", 80, seed=6, domain=domain) if len(e.slots.objects) == 2]
    assert {e.slots.where for e in pairs} == {"to the left of", "above"}
    for example in pairs:
        pixels = np.asarray(example.image, dtype=np.float32)
        centres = []
        for colour, _ in example.slots.objects:  # colour jitter is +-12 per channel, noise sigma <= 10
            ys, xs = np.nonzero(np.abs(pixels - COLOURS[colour]).sum(-1) < 45)
            centres.append((xs.mean(), ys.mean()))
        axis = 0 if example.slots.where == "to the left of" else 1
        assert centres[0][axis] + 10 < centres[1][axis], (example.references[0], centres)


def _frame(caption: str) -> list[str]:
    """A caption's words with colours, shapes and directions blanked: its template."""
    slot_words = set(COLOURS) | {shape for domain in DOMAINS.values() for shape in domain.shapes}
    words = ["a" if w == "an" else w for w in caption.split()]  # the article follows the colour ("an orange")
    return ["_" if w in slot_words | {"left", "right", "above", "below"} else w for w in words]


def test_reading_order_captions_name_the_left_or_upper_shape_first():
    """`pair_order="reading"` changes the training caption only: same images, references and slots, and each pair's
    caption keeps its phrasing but names the left (upper) shape first."""
    examples = make_dataset("shapes", 120, seed=5)
    reading = make_dataset("shapes", 120, seed=5, pair_order="reading")
    frames = 0
    for example, ordered in zip(examples, reading):
        assert ordered.image.tobytes() == example.image.tobytes() and ordered.references == example.references
        assert ordered.slots == example.slots == parse_shapes_caption(ordered.caption)
        if len(ordered.slots.objects) == 1:
            assert ordered.caption == example.caption
            continue
        (first, _), (second, _) = ordered.slots.objects
        words = ordered.caption.split()
        assert words.index(first) < words.index(second), ordered.caption
        frames += _frame(ordered.caption) == _frame(example.caption)  # the same template
    assert frames == sum(len(e.slots.objects) == 2 for e in examples)
    # Read left to right, top to bottom, a pair's relation is always said as "to the left of" or "above".
    assert not any(" below " in e.caption or " right of " in e.caption for e in reading)
    assert any(" below " in e.caption or " right of " in e.caption for e in examples)
    with pytest.raises(ValueError, match="pair_order must be 'any' or 'reading', got 'left'"):
        make_dataset("shapes", 1, pair_order="left")


def test_builtin_shapes_records_carry_their_slots():
    records = load_records("builtin:shapes", "caption", 3, seed=0, image_size=None)
    assert all(parse_shapes_caption(r["references"][0]) == r["slots"] for r in records)
    assert "slots" not in load_records("builtin:ocr", "ocr", 1, seed=0, image_size=None)[0]


@pytest.mark.slow  # the full shapes demo (minutes): the README's main job names the shapes and their places
def test_full_shapes_demo_names_the_shapes(tmp_path, capsys):
    from splice.cli.demo import run_demo

    metrics = run_demo("shapes", str(tmp_path))
    # Measured with pairs named in reading order (benchmarks/README.md, shapes demo): colour / shape / place-relation /
    # whole captions 0.997 / 1.000 / 0.995 / 0.995 (seed 0) and 1.000 / 1.000 / 0.995 / 0.995 (seed 1, its own
    # held-out scenes). Pairs in either order gave 0.849 / 0.882 / 0.990 / 0.885 (24 of 105 pairs swapped); the
    # ResNet 0.613 / 0.659 / 0.990 / 0.63; the first demo's ViT 0.64 / 0.30 / 0.38 / 0.04. The floors leave room for
    # another CPU's bf16 arithmetic or thread count (about 5 captions in 200) and still fail on the swaps.
    assert metrics["slot_colour"] >= 0.97 and metrics["slot_shape"] >= 0.97, metrics
    assert metrics["slot_where"] >= 0.97 and metrics["slot_sample"] >= 0.95, metrics
    printed = capsys.readouterr().out
    assert "slot accuracy" in printed and printed.count("slots right") >= 3, printed  # the 4 printed samples
