"""Slot accuracy for the built-in shapes captions: does a caption name the right colours, shapes and place/relation?

n-gram metrics (BLEU, CIDEr) reward the sentence frame: a caption that calls every shape a triangle still scores well
when colours, places and phrasing match. Here a generated caption is parsed back into its slots with the generator's
own templates ([`parse_shapes_caption`]) and compared with the scene's true slots (`Example.slots`, which the
generator records) by [`slot_metrics`]: per slot and per sample.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from .builtin import PAIR_TEMPLATES, PLACES, RELATIONS, SINGLE_TEMPLATES, ShapeSlots

# The relations a pair's canonical form uses (first shape to the left of / above the second).
_CANONICAL_RELATIONS = ("to the left of", "above")
SLOT_METRICS = ("slot_colour", "slot_shape", "slot_where", "slot_sample", "slot_parsed")


def _alternatives(phrases: Sequence[str]) -> str:
    return "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))


def _literal(text: str) -> str:
    """A template's words between two fields, escaped; its article "a" matches "an" as well (`with_articles`)."""
    return r"an?\ ".join(re.escape(piece) for piece in re.split(r"\ba ", text))


@functools.cache
def _patterns() -> tuple[re.Pattern, ...]:
    """One full-match pattern per caption template, its slots as named groups."""
    word = r"[a-z]+"
    fields = {
        "thing": rf"(?P<c1>{word}) (?P<s1>{word})",
        "first": rf"(?P<c1>{word}) (?P<s1>{word})",
        "second": rf"(?P<c2>{word}) (?P<s2>{word})",
        "place": f"(?P<place>{_alternatives([phrase for _, phrase in PLACES.values()])})",
        "name": f"(?P<name>{_alternatives(list(PLACES))})",
        "relation": f"(?P<relation>{_alternatives(list(RELATIONS))})",
        "converse": f"(?P<converse>{_alternatives(list(RELATIONS))})",
    }
    patterns = []
    for template in SINGLE_TEMPLATES + PAIR_TEMPLATES:
        parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
        body = "".join(fields[part] if i % 2 else _literal(part) for i, part in enumerate(parts))
        patterns.append(re.compile(body.replace(r"\ ", " ")))
    return tuple(patterns)


def parse_shapes_caption(text: str) -> ShapeSlots | None:
    r"""
    The slots a shapes caption states, in canonical form (as `Example.slots`), or `None` if it fits no template.

    Args:
        text (`str`): a caption, e.g. `"we see a blue circle to the right of a green triangle"`.

    Returns:
        `ShapeSlots` or `None`: e.g. `ShapeSlots((("green", "triangle"), ("blue", "circle")), "to the left of")`.
    """
    text = " ".join(text.lower().split())
    for pattern in _patterns():
        match = pattern.fullmatch(text)
        if match is None:
            continue
        groups = match.groupdict()
        first = (groups["c1"], groups["s1"])
        if groups.get("c2") is None:
            place = groups.get("place") or groups["name"]
            name = next((key for key, (_, phrase) in PLACES.items() if phrase == place), place)
            return ShapeSlots((first,), name)
        second = (groups["c2"], groups["s2"])
        # "B {converse} A" says "A {relation} B" with relation = converse's converse.
        relation = groups.get("relation") or RELATIONS[groups["converse"]][0]
        if relation in _CANONICAL_RELATIONS:
            return ShapeSlots((first, second), relation)
        return ShapeSlots((second, first), RELATIONS[relation][0])
    return None


def slot_metrics(predictions: Sequence[str], truths: Sequence[ShapeSlots]) -> dict[str, float]:
    r"""
    Per-slot and per-sample accuracy of generated shapes captions against the scenes' true slots.

    Each shape of a scene has a colour slot and a shape slot (a pair's shapes compared in canonical order: left or
    upper first), and each scene one place/relation slot. A caption that fits no template, or names a different number
    of shapes than the scene has, gets the slots it lacks wrong.

    Args:
        predictions (`Sequence[str]`): generated captions.
        truths (`Sequence[ShapeSlots]`): each scene's slots (`Example.slots`, or `parse_shapes_caption` of a reference).

    Returns:
        `dict[str, float]`: `slot_colour`, `slot_shape` (fraction of the shapes' colour / shape slots right),
        `slot_where` (place or relation), `slot_sample` (fraction of captions with every slot right) and `slot_parsed`
        (fraction that fit a template).
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions but {len(truths)} true slots; pass one per image")
    if not truths:
        return dict.fromkeys(SLOT_METRICS, 0.0)
    colours = shapes = objects = wheres = samples = parsed = 0
    for prediction, truth in zip(predictions, truths):
        guess = parse_shapes_caption(prediction)
        parsed += guess is not None
        guessed = guess.objects if guess is not None and len(guess.objects) == len(truth.objects) else ()
        right_colours = sum(g[0] == t[0] for g, t in zip(guessed, truth.objects))
        right_shapes = sum(g[1] == t[1] for g, t in zip(guessed, truth.objects))
        right_where = guess is not None and guess.where == truth.where
        colours, shapes, objects = colours + right_colours, shapes + right_shapes, objects + len(truth.objects)
        wheres += right_where
        samples += right_where and right_colours == right_shapes == len(truth.objects)
    n = len(truths)
    return {
        "slot_colour": colours / objects,
        "slot_shape": shapes / objects,
        "slot_where": wheres / n,
        "slot_sample": samples / n,
        "slot_parsed": parsed / n,
    }
