"""Inputs and outputs without transformers: images -> `pixel_values` from `preprocessor_config.json`, texts <->
ids with the `tokenizers` library and `tokenizer.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# The image processors whose steps are resize to (height, width), rescale, normalize (ViT, DeiT, BEiT, TrOCR's ViT,
# Swin, ...); their PIL implementation in transformers is what this reproduces.
_SUPPORTED_KEYS = {
    "do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
    "do_convert_rgb", "image_processor_type", "processor_class", "feature_extractor_type", "default_to_square",
    "data_format", "input_data_format", "return_tensors", "do_center_crop", "crop_size", "crop_pct", "backend",
}  # fmt: skip


class ImageProcessor:
    """Resize to `size`, rescale, normalize, channels first: `pixel_values` `[B, C, H, W]` float32."""

    def __init__(self, config: dict[str, Any], path: Path):
        self.config = config
        size = config.get("size") or {}
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if config.get("do_resize", True) and not {"height", "width"} <= set(size):
            raise ValueError(
                f"{path}: size={size!r}; the ONNX runtime resizes to an exact {{'height', 'width'}}. Save the image "
                "processor with size={'height': H, 'width': W} before exporting, or preprocess the images yourself."
            )
        if config.get("do_center_crop"):
            raise ValueError(f"{path}: do_center_crop=True is not implemented here; pass `pixel_values` yourself.")
        steps = sorted(key for key, on in config.items() if key not in _SUPPORTED_KEYS and on not in (None, False))
        if steps:  # e.g. Donut's thumbnail + pad: resizing to `size` instead would give other pixel values
            raise ValueError(
                f"{path}: {', '.join(f'{key}={config[key]!r}' for key in steps)}: preprocessing steps the ONNX runtime "
                "does not implement (it resizes, rescales and normalizes); preprocess with transformers' processor "
                "and pass `pixel_values` to generate()."
            )
        self.size = (size.get("height"), size.get("width"))

    @classmethod
    def from_dir(cls, directory: Path) -> ImageProcessor:
        path = directory / "preprocessor_config.json"
        if path.is_file():
            return cls(json.loads(path.read_text()), path)
        # transformers v5 processors (SpliceProcessor) save the image processor inside processor_config.json
        combined = directory / "processor_config.json"
        if combined.is_file():
            config = json.loads(combined.read_text()).get("image_processor")
            if isinstance(config, dict):
                return cls(config, combined)
        raise ValueError(
            f"{path} is missing (and {combined.name} has no 'image_processor'): the export has no image processor; "
            "pass `pixel_values` instead."
        )

    def __call__(self, images: Any) -> np.ndarray:
        from PIL import Image

        images = [images] if isinstance(images, Image.Image) else list(images)
        cfg = self.config
        mean = np.asarray(cfg.get("image_mean", [0.5, 0.5, 0.5]), dtype=np.float64)
        std = np.asarray(cfg.get("image_std", [0.5, 0.5, 0.5]), dtype=np.float64)
        out = []
        for image in images:
            if cfg.get("do_convert_rgb", True) and image.mode != "RGB":
                image = image.convert("RGB")
            if cfg.get("do_resize", True):
                height, width = self.size
                image = image.resize((width, height), resample=Image.Resampling(cfg.get("resample", 2)))
            array = np.asarray(image).astype(np.float64)
            if array.ndim == 2:
                array = array[:, :, None]
            if cfg.get("do_rescale", True):
                array = array * cfg.get("rescale_factor", 1 / 255)
            if cfg.get("do_normalize", True):
                array = (array - mean) / std
            out.append(array.transpose(2, 0, 1).astype(np.float32))
        return np.stack(out)


class TextTokenizer:
    """`tokenizer.json` through the `tokenizers` library: batch encode with padding, decode without special tokens."""

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer

        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ValueError(
                f"{path} is missing: the runtime decodes with `tokenizers`; save a fast tokenizer with the model "
                "(`AutoTokenizer.from_pretrained(...).save_pretrained(MODEL_DIR)`) and export again."
            )
        self.tokenizer = Tokenizer.from_file(str(path))
        config_path = directory / "tokenizer_config.json"
        self.config = json.loads(config_path.read_text()) if config_path.is_file() else {}

    def decode(self, ids: np.ndarray) -> list[str]:
        rows = [[int(i) for i in row if i >= 0] for row in np.asarray(ids)]
        texts = self.tokenizer.decode_batch(rows, skip_special_tokens=True)
        if self.config.get("clean_up_tokenization_spaces"):
            texts = [_clean_up(text) for text in texts]
        return [text.strip() for text in texts]

    def encode(self, texts: list[str], pad_token_id: int) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), width), pad_token_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _clean_up(text: str) -> str:
    """transformers' `clean_up_tokenization`."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):  # fmt: skip
        text = text.replace(before, after)
    return text
