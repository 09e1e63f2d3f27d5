"""Generated, offline datasets: coloured shapes with positional captions, and rendered text lines for OCR.

Nothing is downloaded: images are drawn with Pillow from a seeded random generator, so a `(task, n, seed, options)`
always gives the same examples. Tokenizers for the generated text are trained with the `tokenizers` library.
"""

from __future__ import annotations

import functools
import glob
import math
import random
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

if TYPE_CHECKING:
    import datasets

COLOURS = {
    # domain "a"
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 180),
    "orange": (245, 135, 0),
    # domain "b"
    "pink": (250, 120, 190),
    "cyan": (30, 205, 215),
    "brown": (120, 70, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "navy": (20, 30, 110),
}


class Vocabulary(NamedTuple):
    colours: tuple[str, ...]
    shapes: tuple[str, ...]


class ShapeSlots(NamedTuple):
    r"""
    What a shapes scene holds, in one canonical form (every phrasing of a scene has the same slots).

    Args:
        objects: `(colour, shape)` of each shape; of a pair, the left (or upper) shape first.
        where: a single shape's place (a key of `PLACES`: `"left"`, `"centre"`, ...); a pair's relation, first to
            second: `"to the left of"` or `"above"`.
    """

    objects: tuple[tuple[str, str], ...]
    where: str


# Disjoint content words, so a model trained on one domain meets only unseen colours and shapes in the other.
DOMAINS = {
    "a": Vocabulary(("red", "green", "blue", "yellow", "purple", "orange"), ("square", "circle", "triangle", "star")),
    "b": Vocabulary(("pink", "cyan", "brown", "white", "black", "navy"), ("hexagon", "diamond", "pentagon", "cross")),
}

# Centres of single shapes as fractions of the image, and how each place is said.
PLACES = {
    "left": ((1 / 6, 1 / 2), "on the left"),
    "right": ((5 / 6, 1 / 2), "on the right"),
    "top": ((1 / 2, 1 / 6), "at the top"),
    "bottom": ((1 / 2, 5 / 6), "at the bottom"),
    "centre": ((1 / 2, 1 / 2), "in the centre"),
}
# "A {relation} B": its converse (for "B {converse} A"), the axis (0: x, 1: y) along which it separates the shapes, and
# whether A has the smaller coordinate on that axis.
RELATIONS = {
    "to the left of": ("to the right of", 0, True),
    "to the right of": ("to the left of", 0, False),
    "above": ("below", 1, True),
    "below": ("above", 1, False),
}
SINGLE_TEMPLATES = (
    "a {thing} {place}",  # canonical
    "there is a {thing} {place}",
    "{name}: a {thing}",
    "{place} there is a {thing}",
    "the image shows a {thing} {place}",
    "a {thing} can be seen {place}",
    "one {thing} {place}",
)
PAIR_TEMPLATES = (
    "a {first} {relation} a {second}",  # canonical
    "there is a {first} {relation} a {second}",
    "a {second} {converse} a {first}",
    "the {first} is {relation} the {second}",
    "two shapes: a {first} {relation} a {second}",
    "we see a {second} {converse} a {first}",
)
N_REFERENCES = 5

# Common short English words for OCR lines (short, so three of them fit a 160-pixel line legibly).
WORDS = tuple(
    """
    the of and to in is you that it he was for on are as with his they at be this have from or one had by word but
    not what all were we when your can said there use an each which she do how their if will up other about out many
    then them these so some her would make like him into time has look two more write go see number no way could
    people my than first water been call who oil its now find long down day did get come made may part over new
    sound take only little work know place year live me back give most very after thing our just name good man think
    say great where help through much before line right too mean old any same tell boy follow came want
    show also around form three small set put end does another well large must big even such because turn here why
    ask went men read need land differ home us move try kind hand picture again change off play spell air away
    animal house point page letter mother answer found study still learn should world high every near add food
    between own below country plant last school father keep tree never start city earth eye light thought head
    under story saw left few while along might close seem next hard open example begin life always those both paper
    money got group often run music until side feet car mile night walk white sea began grow took river four
    carry state once book hear stop without second later miss idea enough eat face watch far real almost let above
    girl friend summer cut young talk soon list song being leave family it's color red blue green black yellow
    north south east west wind rain snow sun moon star fire stone glass road bridge train ship bird fish
    horse dog cat cow milk bread apple orange sugar salt door window table chair bed floor wall garden
    """.split()
)

# Searched in order; the first pattern that finds fonts wins, so well-known Latin text fonts are preferred over whatever
# else is installed (symbol or emoji fonts would render boxes).
FONT_GLOBS = (
    "/usr/share/fonts/truetype/dejavu/*.ttf",
    "/usr/share/fonts/truetype/liberation*/*.ttf",
    "/usr/share/fonts/truetype/freefont/*.ttf",
    "/usr/share/fonts/**/*.ttf",
    "/usr/local/share/fonts/**/*.ttf",
    "/Library/Fonts/*.ttf",
    "C:/Windows/Fonts/*.ttf",
)
SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")  # ids 0-3
# Always in a character vocabulary, so held-out text with a character the training texts lacked is not [UNK].
_PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "


@dataclass
class Example:
    r"""
    One generated example.

    Args:
        image (`PIL.Image.Image`): the RGB image.
        caption (`str`): the training target.
        references (`list[str]`): every correct text for the image (5 phrasings for shapes, the text for OCR).
        slots (`ShapeSlots`, *optional*): what a shapes scene holds (colours, shapes, place or relation); `None` for
            OCR.
    """

    image: Image.Image
    caption: str
    references: list[str]
    slots: ShapeSlots | None = None


def make_dataset(
    task: str, n: int, seed: int = 0, image_size: int | tuple[int, int] | None = None, **options
) -> list[Example]:
    r"""
    Generate `n` examples of a built-in task, deterministically from `seed` (OCR images also depend on the fonts found).

    Args:
        task (`str`): `"shapes"` (coloured shapes with positional captions) or `"ocr"` (rendered text lines).
        n (`int`): number of examples.
        seed (`int`, *optional*, defaults to 0): seeds everything drawn.
        image_size (`int` or `tuple[int, int]`, *optional*): `(width, height)`, or the side of a square; defaults to 64
            for shapes and `(160, 32)` for OCR.
        options: passed to the task's generator.
            shapes: `domain` (`"a"` or `"b"`, defaults to `"a"`), `colours` and `shapes` (names overriding the
            domain's; colours from `COLOURS`), `max_shapes` (1 or 2, defaults to 2), `vary_wording` (defaults to
            `True`: the caption is one of the references at random; `False`: always the canonical `references[0]`,
            e.g. `"a red circle on the left"` or `"a red circle to the left of a blue square"`), `pair_order`
            (`"any"`, the default: the caption names a pair's shapes in whichever order its phrasing does;
            `"reading"`: the caption's phrasing is kept but names the left (upper) shape first, e.g. `"we see a red
            circle to the left of a blue square"` for the reference `"we see a blue square to the right of a red
            circle"`; references, images and the rest of the data are the same for both).
            ocr: `max_words` (defaults to 3); `text`: `"words"` (default: up to `max_words` common words and numbers),
            `"random"` (random strings of 3 to `max_chars` (16) letters, digits and punctuation) or `"mixed"`
            (random strings with probability `random_fraction`, 0.5); `fonts` and `exclude_fonts` (font file names
            or paths, see [`select_fonts`]), e.g. to hold a font out of training. The text is the single reference.

    Returns:
        `list[Example]`
    """
    generators = {"shapes": (_shapes_example, 64), "ocr": (_ocr_example, (160, 32))}
    if task not in generators:
        raise ValueError(f"task must be one of {sorted(generators)}, got {task!r}")
    generate, default_size = generators[task]
    size = image_size or default_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    rng, noise_rng = random.Random(seed), np.random.default_rng(seed)
    return [generate(rng, noise_rng, size, **options) for _ in range(n)]


def _add_noise(image: Image.Image, noise_rng: np.random.Generator, sigma: float, salt: float = 0.0) -> Image.Image:
    """Gaussian noise of std `sigma` on every channel, and a fraction `salt` of pixels set to black or white."""
    pixels = np.asarray(image, dtype=np.float32) + noise_rng.normal(0.0, sigma, (image.height, image.width, 3))
    flipped = noise_rng.random((image.height, image.width)) < salt
    pixels[flipped] = noise_rng.choice([0.0, 255.0], size=(int(flipped.sum()), 1))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# --- shapes ------------------------------------------------------------------------------------------------------


# A plus sign with arms 0.7 wide, as fractions of the radius: one half of the outline, then the other by symmetry.
_HALF_CROSS = ((0.35, 1), (0.35, 0.35), (1, 0.35), (1, -0.35), (0.35, -0.35), (0.35, -1))
_CROSS = _HALF_CROSS + tuple((-x, -y) for x, y in _HALF_CROSS)


def _shape_outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon of `shape` centred at (cx, cy) within a circle of radius `r` (a circle is drawn with 48 sides)."""

    def ring(sides: int, start: float, radii: Sequence[float] = (1.0,)) -> list[tuple[float, float]]:
        angles = [start + 2 * math.pi * k / sides for k in range(sides)]
        radii = [r * radii[k % len(radii)] for k in range(sides)]
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a, radius in zip(angles, radii)]

    up = -math.pi / 2
    outlines = {
        "circle": lambda: ring(48, 0.0),
        "square": lambda: ring(4, math.pi / 4),
        "triangle": lambda: ring(3, up),
        "star": lambda: ring(10, up, (1.0, 0.45)),
        "hexagon": lambda: ring(6, 0.0),
        "pentagon": lambda: ring(5, up),
        "diamond": lambda: [(cx, cy - r), (cx + 0.65 * r, cy), (cx, cy + r), (cx - 0.65 * r, cy)],
        "cross": lambda: [(cx + x * r, cy + y * r) for x, y in _CROSS],
    }
    if shape not in outlines:
        raise ValueError(f"unknown shape {shape!r}; known: {sorted(outlines)}")
    return outlines[shape]()


def _draw_shape(
    draw: ImageDraw.ImageDraw, rng: random.Random, colour: str, shape: str, centre: Sequence[float], r: float
) -> None:
    # The colour is jittered by well under half the distance between palette colours, so it stays nameable.
    fill = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in COLOURS[colour])
    draw.polygon(_shape_outline(shape, centre[0], centre[1], r), fill=fill)


def _shapes_example(
    rng: random.Random,
    noise_rng: np.random.Generator,
    size: tuple[int, int],
    domain: str = "a",
    colours: Sequence[str] | None = None,
    shapes: Sequence[str] | None = None,
    max_shapes: int = 2,
    vary_wording: bool = True,
    pair_order: str = "any",
) -> Example:
    if max_shapes not in (1, 2):
        raise ValueError(f"max_shapes must be 1 or 2, got {max_shapes}")
    if pair_order not in ("any", "reading"):
        raise ValueError(f"pair_order must be 'any' or 'reading', got {pair_order!r}")
    colours, shapes = list(colours or DOMAINS[domain].colours), list(shapes or DOMAINS[domain].shapes)
    grey = rng.randint(100, 160)
    image = Image.new("RGB", size, tuple(grey + rng.randint(-10, 10) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    if rng.randint(1, max_shapes) == 1:
        references, slots = _draw_single(draw, rng, size, colours, shapes)
        captions = references
    else:
        references, slots, in_reading_order = _draw_pair(draw, rng, size, colours, shapes)
        captions = in_reading_order if pair_order == "reading" else references
    caption = rng.choice(captions) if vary_wording else captions[0]
    return Example(_add_noise(image, noise_rng, sigma=rng.uniform(2, 10)), caption, references, slots)


def with_articles(caption: str) -> str:
    """The caption with "an" before a vowel where the templates say "a" ("an orange star", not "a orange star")."""
    return re.sub(r"\ba (?=[aeiou])", "an ", caption)


def _phrasings(templates: Sequence[str], rng: random.Random) -> list[str]:
    """The canonical phrasing (first template) and `N_REFERENCES - 1` others at random, COCO-style."""
    return [templates[0]] + rng.sample(templates[1:], N_REFERENCES - 1)


def _draw_single(
    draw: ImageDraw.ImageDraw, rng: random.Random, size: tuple[int, int], colours: list[str], shapes: list[str]
) -> tuple[list[str], ShapeSlots]:
    colour, shape, place = rng.choice(colours), rng.choice(shapes), rng.choice(list(PLACES))
    (fx, fy), place_phrase = PLACES[place]
    r = rng.uniform(0.09, 0.14) * min(size)
    # Jittered around the place's anchor but kept inside the image.
    centre = [min(s - r, max(r, (f + rng.uniform(-0.05, 0.05)) * s)) for f, s in zip((fx, fy), size)]
    _draw_shape(draw, rng, colour, shape, centre, r)
    words = {"thing": f"{colour} {shape}", "place": place_phrase, "name": place}
    return [with_articles(t.format(**words)) for t in _phrasings(SINGLE_TEMPLATES, rng)], ShapeSlots(
        ((colour, shape),), place
    )


def _draw_pair(
    draw: ImageDraw.ImageDraw, rng: random.Random, size: tuple[int, int], colours: list[str], shapes: list[str]
) -> tuple[list[str], ShapeSlots, list[str]]:
    """Draw two shapes; their references, slots, and the same phrasings naming the left (upper) shape first."""
    first, second = [(colour, rng.choice(shapes)) for colour in rng.sample(colours, 2)]
    relation = rng.choice(list(RELATIONS))
    converse, axis, first_is_low = RELATIONS[relation]
    r = rng.uniform(0.09, 0.13) * min(size)
    # Along the relation's axis the shapes sit in opposite outer thirds (further apart than 2r, so never overlapping);
    # across it, anywhere central.
    along = sorted([rng.uniform(0.15, 0.35), rng.uniform(0.65, 0.85)], reverse=not first_is_low)
    for (colour, shape), a in zip((first, second), along):
        fractions = (a, rng.uniform(0.25, 0.75)) if axis == 0 else (rng.uniform(0.25, 0.75), a)
        _draw_shape(draw, rng, colour, shape, [f * s for f, s in zip(fractions, size)], r)
    words = {"first": " ".join(first), "second": " ".join(second), "relation": relation, "converse": converse}
    low_first = relation in ("to the left of", "above")  # the canonical form names the left (upper) shape first
    slots = ShapeSlots((first, second) if low_first else (second, first), relation if low_first else converse)
    templates = _phrasings(PAIR_TEMPLATES, rng)
    references = [with_articles(t.format(**words)) for t in templates]
    return references, slots, [with_articles(_in_reading_order(t, slots)) for t in templates]


def _in_reading_order(template: str, slots: ShapeSlots) -> str:
    """A pair template filled so that the shape it names first is the left (upper) one, `slots.objects[0]`."""
    (low, high), relation = [" ".join(o) for o in slots.objects], slots.where
    if template.index("{first}") < template.index("{second}"):
        return template.format(first=low, second=high, relation=relation, converse=RELATIONS[relation][0])
    return template.format(first=high, second=low, relation=RELATIONS[relation][0], converse=relation)


# --- ocr ---------------------------------------------------------------------------------------------------------

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.cache
def find_fonts() -> tuple[str, ...]:
    r"""
    TrueType fonts for OCR images, from the first of `FONT_GLOBS` that finds any (e.g. DejaVu on Debian).

    Returns:
        `tuple[str, ...]`: sorted font paths; empty when none is found (Pillow's bundled font is used then).
    """
    for pattern in FONT_GLOBS:
        paths = sorted(glob.glob(pattern, recursive=True))
        if paths:
            return tuple(paths)
    return ()


@functools.lru_cache(maxsize=1024)
def _font(path: str | None, size: int) -> _Font:
    # Pillow >= 10.1 bundles a scalable font as the default, so the fallback still varies in size.
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


# Characters of OCR's random strings: letters, digits and common punctuation (no language prior to lean on).
RANDOM_CHARACTERS = string.ascii_letters + string.digits + ".,:;!?'-()/&%"


def select_fonts(fonts: Sequence[str] | None = None, exclude_fonts: Sequence[str] = ()) -> tuple[str, ...]:
    r"""
    The OCR fonts to draw from: [`find_fonts`] narrowed to `fonts` and without `exclude_fonts`.

    Args:
        fonts (`Sequence[str]`, *optional*): file names (e.g. `"DejaVuSerif.ttf"`) or paths; all found fonts when
            omitted. A path that [`find_fonts`] does not list is used as given.
        exclude_fonts (`Sequence[str]`): file names or paths to leave out (e.g. a held-out font).

    Returns:
        `tuple[str, ...]`: font paths, possibly empty (Pillow's bundled font is used then).
    """
    found = find_fonts()
    by_name = {path.rsplit("/", 1)[-1]: path for path in found}
    chosen = found if fonts is None else tuple(by_name.get(name, name) for name in fonts)
    excluded = set(exclude_fonts)
    return tuple(path for path in chosen if path not in excluded and path.rsplit("/", 1)[-1] not in excluded)


def _random_string(rng: random.Random, max_chars: int) -> str:
    """Random characters (and a space now and then, never at an end): text no word list or language model predicts."""
    length = rng.randint(3, max_chars)
    chars = [" " if 0 < i < length - 1 and rng.random() < 0.1 else rng.choice(RANDOM_CHARACTERS) for i in range(length)]
    return "".join(chars).replace("  ", " ")


def _random_text(rng: random.Random, max_words: int) -> str:
    words = [
        str(rng.randint(0, 9999)) if rng.random() < 0.2 else rng.choice(WORDS) for _ in range(rng.randint(1, max_words))
    ]
    text, case = " ".join(words), rng.random()
    return text.upper() if case < 0.1 else text.capitalize() if case < 0.3 else text


def _fitted_font(rng: random.Random, text: str, size: tuple[int, int], fonts: Sequence[str] | None = None) -> _Font:
    """A random font (of `fonts`, default all found) at a random size, shrunk until `text` fits with a small margin."""
    fonts = find_fonts() if fonts is None else fonts
    path = rng.choice(fonts) if fonts else None
    points = rng.randint(int(0.45 * size[1]), int(0.75 * size[1]))
    while points > 6:
        left, top, right, bottom = _font(path, points).getbbox(text)
        if right - left <= size[0] - 6 and bottom - top <= size[1] - 4:
            break
        points -= 1
    return _font(path, points)


def _ocr_colours(rng: random.Random) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Background and ink colours: light paper with dark ink, or (30%) the reverse; always strongly contrasting."""
    light = tuple(rng.randint(170, 255) for _ in range(3))
    dark = tuple(rng.randint(0, 90) for _ in range(3))
    return (dark, light) if rng.random() < 0.3 else (light, dark)


def _ocr_example(
    rng: random.Random,
    noise_rng: np.random.Generator,
    size: tuple[int, int],
    max_words: int = 3,
    text: str = "words",
    random_fraction: float = 0.5,
    max_chars: int = 16,
    fonts: Sequence[str] | None = None,
    exclude_fonts: Sequence[str] = (),
) -> Example:
    if text not in ("words", "random", "mixed"):
        raise ValueError(f"text must be 'words', 'random' or 'mixed', got {text!r}")
    font_paths = None if fonts is None and not exclude_fonts else select_fonts(fonts, exclude_fonts)
    if text == "random" or (text == "mixed" and rng.random() < random_fraction):
        text = _random_string(rng, max_chars)
    else:
        text = _random_text(rng, max_words)
    font = _fitted_font(rng, text, size, font_paths)
    # Text is drawn into a mask, rotated slightly, then used to composite ink over the background.
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = rng.uniform(3, max(3, size[0] - (right - left) - 3)) - left
    y = rng.uniform(2, max(2, size[1] - (bottom - top) - 2)) - top
    draw.text((x, y), text, fill=255, font=font)
    mask = mask.rotate(rng.uniform(-3, 3), resample=Image.Resampling.BICUBIC)
    background, ink = _ocr_colours(rng)
    image = Image.composite(Image.new("RGB", size, ink), Image.new("RGB", size, background), mask)
    image = _add_noise(image, noise_rng, sigma=rng.uniform(0, 12), salt=rng.uniform(0, 0.01))
    return Example(image, text, [text])


# --- tokenizers and datasets ---------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], kind: str = "word") -> PreTrainedTokenizerFast:
    r"""
    A word- or character-level tokenizer learnt from `texts`, with [PAD]=0, [BOS]=1, [EOS]=2, [UNK]=3.

    Encoding appends [EOS], so targets end with it and the decoder learns to stop; generation starts from [BOS] (the
    decoder start token). `decode(encode(text), skip_special_tokens=True) == text` for words split by single spaces
    (word level: tokens are joined with spaces) and for any text of known characters (character level).

    Args:
        texts (`Iterable[str]`): the training texts.
        kind (`str`, *optional*, defaults to `"word"`): `"word"` (whitespace-separated words, e.g. shapes captions)
            or `"char"` (every character a token, spaces included, e.g. OCR; printable ASCII is always in the
            vocabulary).

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]: saved and loaded with `save_pretrained`/`from_pretrained`.
    """
    texts = list(texts)
    if kind == "word":
        symbols, pre_tokenizer = {word for text in texts for word in text.split()}, pre_tokenizers.WhitespaceSplit()
    elif kind == "char":
        symbols = set("".join(texts)) | set(_PRINTABLE)
        pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    else:
        raise ValueError(f"kind must be 'word' or 'char', got {kind!r}")
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(sorted(symbols)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizer
    if kind == "char":
        core.decoder = decoders.Fuse()  # without a decoder, tokens would be joined with spaces
    core.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        unk_token="[UNK]",
        clean_up_tokenization_spaces=False,  # it would rewrite " ." as "." and break exact round trips
    )


def to_hf_dataset(examples: Sequence[Example]) -> datasets.Dataset:
    r"""
    The examples as a `datasets.Dataset` with columns `image` (an `Image` feature), `caption` and `references`.

    Args:
        examples (`Sequence[Example]`): e.g. from [`make_dataset`].

    Returns:
        `datasets.Dataset`
    """
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "references": datasets.List(datasets.Value("string")),
        }
    )
    columns = {
        "image": [example.image for example in examples],
        "caption": [example.caption for example in examples],
        "references": [example.references for example in examples],
    }
    return datasets.Dataset.from_dict(columns, features=features)
