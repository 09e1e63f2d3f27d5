"""Training data: loaders for the usual caption/text formats (`loaders`), the collator that turns records into model
inputs (`collator`), and generated offline datasets (`builtin`). Opening images and files is `splice.data_io`, a module
below every layer.

A record is a dict: `{"image": path | bytes | PIL.Image, "text": target}` for image-to-text,
`{"source": text, "text": target}` for text-to-text; optional `"prompt"` (decoder-side prefix, e.g. SmallCap's
retrieved captions: fed to the decoder, never scored) and `"references"` (all reference captions, for metrics).
"""

from ..data_io import IMAGE_SUFFIXES, UNREADABLE_IMAGE_ERRORS, DataError, keep_readable, open_image
from .collator import SpliceCollator
from .loaders import from_hf_dataset, load_coco_json, load_imagefolder, load_text_pairs, record_references

__all__ = [
    "IMAGE_SUFFIXES",
    "DataError",
    "UNREADABLE_IMAGE_ERRORS",
    "SpliceCollator",
    "from_hf_dataset",
    "keep_readable",
    "load_coco_json",
    "load_imagefolder",
    "load_text_pairs",
    "open_image",
    "record_references",
]
