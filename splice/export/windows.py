"""Window-attention encoders (Swin, DonutSwin, Swin v2) traced so that every image size runs through one graph.

transformers' Swin layers decide with Python `if`s on the feature-map size whether to pad it to the window size
(`was_padded`), whether to pad an odd map before patch merging, and whether to shrink the window when the map is
smaller than it. The tracer records only the branch the example input takes: an example whose maps never need padding
gives a graph that fails (or, worse, computes something else) on maps that do. The pad amounts themselves are
arithmetic on traced sizes — zero when no padding is needed — so an example that takes every *padding* branch gives a
graph that is right for every size: `example_size` picks one. Maps no larger than the window are the one case left
out (`min_side`: the runtime refuses smaller images). The patch embedding pads the image to a multiple of the
patch size the same way; `pad_to_patches` does it with traced amounts in the exported wrapper instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional

__all__ = ["example_size", "has_windows", "min_side", "pad_to_patches"]


def has_windows(config: Any) -> bool:
    """A Swin-like encoder: shifted-window attention over stages that halve the feature map."""
    return hasattr(config, "window_size") and hasattr(config, "depths")


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _takes_every_padding_branch(size: int, window: int, stages: int) -> bool:
    """Feature-map side `size` at the first stage: at every stage larger than the window (no window shrinking) and
    not a multiple of it (window padding), and odd before every patch merging (merge padding)."""
    for stage in range(stages):
        if size <= window or size % window == 0 or (stage < stages - 1 and size % 2 == 0):
            return False
        size = (size + 1) // 2
    return True


def example_size(config: Any) -> tuple[int, int]:
    """`(height, width)` of an example image, a multiple of the patch size, whose feature maps take every padding
    branch at every stage (two different sides, so that a swapped height and width would show)."""
    patch = _pair(config.patch_size)
    window, stages = int(config.window_size), len(config.depths)
    sides = []
    size = window + 1
    while len(sides) < 2:
        if _takes_every_padding_branch(size, window, stages):
            sides.append(size)
        size += 1
    return sides[0] * patch[0], sides[1] * patch[1]


def min_side(config: Any) -> int:
    """The smallest image side (pixels) whose feature maps stay larger than the window at every stage: below it
    transformers shrinks the window to the map (a Python branch the graph does not hold), so the runtime refuses it."""
    patch, window, stages = max(_pair(config.patch_size)), int(config.window_size), len(config.depths)
    size = window + 1
    while -(-size // 2 ** (stages - 1)) <= window:
        size += 1
    return size * patch


def pad_to_patches(pixel_values: torch.Tensor, patch_size: Any) -> torch.Tensor:
    """Zero-pad right and bottom to a multiple of the patch size, as Swin's embeddings do (traced amounts: zero for
    images that need none, so the exported graph takes any size)."""
    patch_height, patch_width = _pair(patch_size)
    height, width = pixel_values.shape[-2:]
    return functional.pad(pixel_values, (0, (-width) % patch_width, 0, (-height) % patch_height))
