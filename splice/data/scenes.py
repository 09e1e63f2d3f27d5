"""A generated two-domain world for retrieval-augmented captioning: scenes of counted, coloured shapes.

A scene holds one group of 1–3 equal shapes, or two groups (1–2 each) side by side or one above the other. Its captions
name the counts, colours, shapes and the relation, in several phrasings (5 references per scene, COCO-style). The two
domains share some content words and differ in the rest, as two caption corpora do: domain `"a"` and domain `"b"` both
use red, blue and circles; only `"a"` has green, yellow, purple, orange, squares, triangles and stars; only `"b"` has
pink, cyan, brown, white, hexagons, diamonds and crosses. Each domain also has two phrasings of its own ("an image of
..." in `a`, "a picture of ..." in `b`). Shapes are drawn with the built-in shapes world's outlines and colours
(`splice.data.builtin`); its own generator is not used or changed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from .builtin import Example, _add_noise, _draw_shape, with_articles


class SceneDomain(NamedTuple):
    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    single_templates: tuple[str, ...]  # this domain's own phrasings, after the shared ones
    pair_templates: tuple[str, ...]


class SceneSlots(NamedTuple):
    r"""
    What a scene holds, in one canonical form.

    Args:
        groups: `(count, colour, shape)` of each group; of two, the left (or upper) group first.
        relation: `None` for one group; for two, the first group's relation to the second: `"to the left of"` or
            `"above"`.
    """

    groups: tuple[tuple[int, str, str], ...]
    relation: str | None


SHARED_SINGLE = ("{thing}", "there {be} {thing}", "the image shows {thing}", "we see {thing}", "{thing} on grey")
SHARED_PAIR = (
    "{first} {relation} {second}",
    "there {be} {first} {relation} {second}",
    "{second} {converse} {first}",
    "we see {first} and {second}",
    "the image shows {second} {converse} {first}",
)
DOMAINS = {
    "a": SceneDomain(
        ("red", "blue", "green", "yellow", "purple", "orange"),
        ("circle", "square", "triangle", "star"),
        ("an image of {thing}", "{thing} can be seen"),
        ("an image of {first} {relation} {second}", "{first} and {second} can be seen"),
    ),
    "b": SceneDomain(
        ("red", "blue", "pink", "cyan", "brown", "white"),
        ("circle", "hexagon", "diamond", "cross"),
        ("a picture of {thing}", "a drawing with {thing}"),
        ("a picture of {first} {relation} {second}", "a drawing with {first} and {second}"),
    ),
}
# Each relation, the first group's region and the second's (x0, y0, x1, y1 as fractions of the image), its converse.
RELATIONS = {
    "to the left of": ((0.0, 0.1, 0.5, 0.9), (0.5, 0.1, 1.0, 0.9), "to the right of"),
    "above": ((0.1, 0.0, 0.9, 0.5), (0.1, 0.5, 0.9, 1.0), "below"),
}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
N_REFERENCES = 5


def make_scenes(n: int, domain: str = "a", seed: int = 0, image_size: int = 48) -> list[Example]:
    r"""
    Generate `n` scenes of one domain, deterministically from `seed`.

    Args:
        n (`int`): number of scenes.
        domain (`str`, *optional*, defaults to `"a"`): `"a"` or `"b"` (see the module docstring).
        seed (`int`, *optional*, defaults to 0): seeds everything drawn.
        image_size (`int`, *optional*, defaults to 48): side of the square image in pixels.

    Returns:
        `list[Example]`: `caption` is one of the 5 `references` at random; `slots` is a [`SceneSlots`].
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r}; the scene world has the domains {sorted(DOMAINS)}.")
    if image_size < 32:
        raise ValueError(f"image_size={image_size} leaves shapes too small to tell apart; use 32 or more.")
    rng, noise_rng = random.Random(seed), np.random.default_rng(seed)
    return [_scene(rng, noise_rng, DOMAINS[domain], image_size) for _ in range(n)]


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def _thing(count: int, colour: str, shape: str) -> str:
    return with_articles(f"{COUNT_WORDS[count]} {colour} {shape if count == 1 else _plural(shape)}")


def _scene(rng: random.Random, noise_rng: np.random.Generator, domain: SceneDomain, size: int) -> Example:
    grey = rng.randint(100, 160)
    image = Image.new("RGB", (size, size), tuple(grey + rng.randint(-10, 10) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.08, 0.11) * size
    if rng.random() < 0.5:
        group = (rng.randint(1, 3), rng.choice(domain.colours), rng.choice(domain.shapes))
        _draw_group(draw, rng, group, (0.0, 0.0, 1.0, 1.0), size, radius)
        slots = SceneSlots((group,), None)
        be = "is" if group[0] == 1 else "are"
        filled = [t.format(thing=_thing(*group), be=be) for t in SHARED_SINGLE + domain.single_templates]
    else:
        kinds = rng.sample([(c, s) for c in domain.colours for s in domain.shapes], 2)
        groups = tuple((rng.randint(1, 2), *kind) for kind in kinds)
        relation = rng.choice(list(RELATIONS))
        first_region, second_region, converse = RELATIONS[relation]
        for group, region in zip(groups, (first_region, second_region)):
            _draw_group(draw, rng, group, region, size, radius)
        slots = SceneSlots(groups, relation)
        words = {"first": _thing(*groups[0]), "second": _thing(*groups[1]), "relation": relation}
        words |= {"converse": converse, "be": "is" if groups[0][0] == 1 else "are"}
        filled = [t.format(**words) for t in SHARED_PAIR + domain.pair_templates]
    references = [filled[0]] + rng.sample(filled[1:], N_REFERENCES - 1)
    image = _add_noise(image, noise_rng, sigma=rng.uniform(2, 8))
    return Example(image, rng.choice(references), references, slots)


def _draw_group(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    group: tuple[int, str, str],
    region: Sequence[float],
    size: int,
    radius: float,
) -> None:
    """`count` shapes at random places in `region`, never overlapping (placed apart by more than two radii)."""
    count, colour, shape = group
    x0, y0, x1, y1 = (f * size for f in region)
    centres: list[tuple[float, float]] = []
    for _ in range(200):
        if len(centres) == count:
            break
        centre = (rng.uniform(x0 + radius, x1 - radius), rng.uniform(y0 + radius, y1 - radius))
        if all((centre[0] - x) ** 2 + (centre[1] - y) ** 2 > (2.3 * radius) ** 2 for x, y in centres):
            centres.append(centre)
    if len(centres) < count:
        raise RuntimeError(f"could not place {count} shapes of radius {radius:.1f} in region {region} of {size} px")
    for centre in centres:
        _draw_shape(draw, rng, colour, shape, centre, radius)


def caption_slots(caption: str) -> tuple[tuple[int, str, str], ...]:
    r"""
    The groups a caption of this world names, as sorted `(count, colour, shape)` (the relation is left out: some
    phrasings do not state it), e.g. to check whether a retrieved caption describes an image's objects.

    Args:
        caption (`str`): a caption of this world (or a generated one; words it does not know are skipped).

    Returns:
        `tuple`: sorted groups; empty when the caption names none.
    """
    counts = {word: count for count, word in COUNT_WORDS.items()} | {"an": 1}  # "an orange star" (`with_articles`)
    colours = {c for d in DOMAINS.values() for c in d.colours}
    shapes = {form: s for d in DOMAINS.values() for s in d.shapes for form in (s, _plural(s))}
    groups, count, colour = [], None, None
    for word in caption.split():
        if word in counts:
            count, colour = counts[word], None
        elif word in colours and count is not None:
            colour = word
        elif colour is not None and count is not None:
            if word in shapes:
                groups.append((count, colour, shapes[word]))
            count, colour = None, None
    return tuple(sorted(groups))


def scene_groups(slots: SceneSlots) -> tuple[tuple[int, str, str], ...]:
    """The scene's groups in [`caption_slots`]' form (sorted), to compare with a caption's."""
    return tuple(sorted(slots.groups))
