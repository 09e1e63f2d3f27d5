"""Property-based fuzzing of the data layer: whatever the input, the only failure is `DataError` (or a documented skip).

Each `check_*` function is one property; the tests run a small CI sample of each, `benchmarks/fuzz.py` runs thousands.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from splice.data import DataError, SpliceCollator, load_coco_json, load_imagefolder, load_text_pairs, open_image
from splice.data.builtin import train_tokenizer

CI = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)

# --- strategies --------------------------------------------------------------------------------------------------

KEYS = ["file_name", "text", "caption", "source", "target", "id", "image_id", "images", "annotations", "filename",
        "filepath", "sentences", "raw", "split"]  # fmt: skip
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from(["a.png", "b.png", "missing.png", "", " ", "a red square", "train"]),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=5)
    ),  # fmt: skip
    max_leaves=12,
)
row_like = st.fixed_dictionaries(
    {}, optional={k: json_values for k in ("file_name", "text", "caption", "source", "target")}
) | json_values  # fmt: skip


caption_values = st.one_of(st.text(min_size=1, max_size=30), st.text(max_size=30),
                           st.lists(st.text(max_size=10), max_size=3), st.text(max_size=30), scalars)  # fmt: skip
# Mostly valid rows (the right keys, captions of random unicode), so the success path is fuzzed too.
near_valid_row = st.fixed_dictionaries(
    {"file_name": st.sampled_from(["a.png", "b.png"]), "text": caption_values,
     "source": st.text(max_size=20), "target": caption_values},
    optional={"caption": caption_values, "extra": json_values},
)  # fmt: skip
row_like = near_valid_row | near_valid_row | row_like


def _line(value: object, raw: bytes) -> bytes:
    return raw if raw else json.dumps(value).encode()


jsonl_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(st.builds(_line, row_like, st.sampled_from([b""] * 9) | st.binary(max_size=20)), max_size=8).map(
        b"\n".join
    ),
)
csv_cells = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from([",", '"', "\n", "\r", "a"]),
                    max_size=15)  # fmt: skip
csv_text = st.builds(
    lambda header, rows: "\n".join([",".join(header)] + [",".join(r) for r in rows]),
    st.lists(st.sampled_from(["file_name", "text", "caption", "x"]) | csv_cells, min_size=1, max_size=3),
    st.lists(st.lists(csv_cells, max_size=4), max_size=6),
)
near_valid_csv = st.lists(
    st.tuples(st.sampled_from(["a.png", "b.png"]), csv_cells).map(
        lambda r: r[0] + "," + '"' + r[1].replace('"', '""') + '"'
    ),
    max_size=6,
).map(lambda rows: "\n".join(["file_name,text"] + rows))
csv_text = near_valid_csv | near_valid_csv | csv_text
csv_bytes = st.one_of(st.binary(max_size=200), csv_text.map(lambda t: t.encode("utf-8", "surrogatepass")))
coco_like = st.fixed_dictionaries(
    {},
    optional={
        "images": st.lists(st.fixed_dictionaries({}, optional={
            "id": scalars, "file_name": scalars, "filename": scalars, "filepath": scalars, "split": scalars,
            "sentences": st.lists(st.fixed_dictionaries({}, optional={"raw": json_values}) | json_values, max_size=3)
            | json_values,
        }) | json_values, max_size=4) | json_values,
        "annotations": st.lists(st.fixed_dictionaries({}, optional={"image_id": scalars, "caption": json_values})
                                | json_values, max_size=5) | json_values,
    },
) | json_values  # fmt: skip
near_valid_coco = st.fixed_dictionaries({
    "images": st.lists(st.fixed_dictionaries({"id": st.integers(0, 3), "file_name": st.sampled_from(["a.png"])}),
                       max_size=3),
    "annotations": st.lists(st.fixed_dictionaries({"image_id": st.integers(0, 3), "caption": caption_values}),
                            max_size=5),
}) | st.fixed_dictionaries({
    "images": st.lists(st.fixed_dictionaries({
        "filename": st.sampled_from(["a.png", "b.png"]), "split": st.sampled_from(["train", "val"]),
        "sentences": st.lists(st.fixed_dictionaries({"raw": caption_values}), max_size=3),
    }), max_size=3),
})  # fmt: skip
coco_like = near_valid_coco | near_valid_coco | coco_like
coco_bytes = st.one_of(
    st.binary(max_size=120), st.builds(lambda v: json.dumps(v).encode(), coco_like),
    st.builds(lambda v, cut: json.dumps(v).encode()[:cut], coco_like, st.integers(0, 200)),
)  # fmt: skip

# --- properties --------------------------------------------------------------------------------------------------


def _folder(directory: Path) -> None:
    Image.new("RGB", (4, 4), "red").save(directory / "a.png")
    (directory / "b.png").write_bytes(b"corrupt")


def _valid(records: list[dict], key: str = "image") -> None:
    assert records, "a loader returned no records instead of raising DataError"
    for record in records:
        assert isinstance(record["text"], str) and record["text"].strip()
        assert record["references"] and all(isinstance(r, str) for r in record["references"])
        assert key in record


def check_imagefolder(content: bytes, name: str = "metadata.jsonl") -> str:
    """`load_imagefolder` on arbitrary metadata bytes: records or `DataError`. Returns the outcome."""
    with tempfile.TemporaryDirectory() as directory:
        _folder(Path(directory))
        (Path(directory) / name).write_bytes(content)
        try:
            _valid(load_imagefolder(directory))
        except DataError:
            return "DataError"
    return "records"


def check_coco(content: bytes, split: str | None = None) -> str:
    with tempfile.TemporaryDirectory() as directory:
        _folder(Path(directory))
        (Path(directory) / "caps.json").write_bytes(content)
        try:
            _valid(load_coco_json(Path(directory) / "caps.json", split=split))
        except DataError:
            return "DataError"
    return "records"


def check_text_pairs(content: bytes) -> str:
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "pairs.jsonl").write_bytes(content)
        try:
            records = load_text_pairs(Path(directory) / "pairs.jsonl")
        except DataError:
            return "DataError"
        _valid(records, "source")
    return "records"


_TOKENIZERS = {}


def check_collator(texts: list, prompts: list, limit: int | None, kind: str) -> str:
    """Random unicode captions, prompts and position limits: labels fit the limit and end with EOS, or `DataError`."""
    if kind not in _TOKENIZERS:
        _TOKENIZERS[kind] = train_tokenizer(["a b c the cat", "x y z"], kind=kind)
    collator = SpliceCollator(_TOKENIZERS[kind], decoder_start_token_id=1, eos_token_id=2, max_positions=limit)
    records = [{"text": t} | ({"prompt": p} if p else {}) for t, p in zip(texts, prompts + [None] * len(texts))]
    try:
        batch = collator.targets(records)
    except DataError:
        assert any(not isinstance(t, str) for t in texts)
        return "DataError"
    labels = batch["labels"]
    assert labels.shape[0] == len(records)
    if limit is not None:
        assert labels.shape[1] <= limit
    for row in labels:
        scored = row[row != -100]
        assert len(scored) and scored[-1] == 2  # every target, however cut, ends with EOS
    return "truncated" if collator.truncated else "batch"


def _sample_encodings() -> list[bytes]:
    pixels = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)
    out = []
    for fmt, mode in [("PNG", "RGBA"), ("PNG", "I;16"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"),
                      ("TIFF", "CMYK"), ("WEBP", "RGB"), ("PNG", "LA")]:  # fmt: skip
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


ENCODINGS = _sample_encodings()
image_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(  # a real file with bytes flipped and/or cut: reaches the decoders' inner paths
        lambda data, flips, cut: bytes((b ^ flips.get(i, 0)) for i, b in enumerate(data[: cut if cut else len(data)])),
        st.sampled_from(ENCODINGS),
        st.dictionaries(st.integers(0, 400), st.integers(1, 255), max_size=6),
        st.integers(0, 400),
    ),
)


def check_image_bytes(data: bytes) -> str:
    try:
        image = open_image(data)
    except DataError:
        return "DataError (skipped)"
    assert image.mode == "RGB"
    return "image"


MODES = ["1", "L", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16", "I;16B", "I;16L",
         "LA", "La", "PA", "RGBa"]  # fmt: skip


def check_image_mode(mode: str, width: int, height: int, seed: int) -> str:
    """A random image in any PIL mode becomes RGB of the same size; 16-bit grey is scaled by x / 257."""
    probe = Image.new(mode, (1, 1))
    size = len(probe.tobytes())
    data = np.random.default_rng(seed).integers(0, 256, width * height * size, dtype=np.uint8).tobytes()
    image = Image.frombytes(mode, (width, height), data)
    if mode == "P":
        image.putpalette(list(np.random.default_rng(seed).integers(0, 256, 768)))
    rgb = open_image(image)
    assert rgb.mode == "RGB" and rgb.size == (width, height)
    if mode.startswith("I;16"):
        expected = np.round(np.asarray(image).astype(float) / 257)
        assert np.abs(np.asarray(rgb)[..., 0] - expected).max() <= 1
    return "image"


# --- CI sample ---------------------------------------------------------------------------------------------------

text_values = st.one_of(st.text(), st.text(max_size=200), st.text(max_size=200), st.none() | st.integers())
PROPERTIES = {
    "imagefolder jsonl": (check_imagefolder, (jsonl_bytes,)),
    "imagefolder csv": (lambda c: check_imagefolder(c, "metadata.csv"), (csv_bytes,)),
    "coco/karpathy json": (check_coco, (coco_bytes, st.sampled_from([None, "train"]))),
    "text-pair jsonl": (check_text_pairs, (jsonl_bytes,)),
    "collator": (
        check_collator,
        (
            st.lists(text_values, min_size=1, max_size=4),
            st.lists(st.text(max_size=40), max_size=4),
            st.none() | st.integers(1, 40),
            st.sampled_from(["word", "char"]),
        ),
    ),  # fmt: skip
    "open_image bytes": (check_image_bytes, (image_bytes,)),
    "open_image modes": (
        check_image_mode,
        (st.sampled_from(MODES), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**32 - 1)),
    ),  # fmt: skip
}


def _ci(name: str):
    check, strategies = PROPERTIES[name]

    def run(args: tuple) -> None:
        check(*args)

    return CI(given(st.tuples(*strategies))(run))


test_imagefolder_jsonl = _ci("imagefolder jsonl")
test_imagefolder_csv = _ci("imagefolder csv")
test_coco_json = _ci("coco/karpathy json")
test_text_pairs = _ci("text-pair jsonl")
test_collator = _ci("collator")
test_open_image_bytes = _ci("open_image bytes")
test_open_image_modes = _ci("open_image modes")
