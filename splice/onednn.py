"""The LM head on oneDNN while generating on a CPU.

A decode step multiplies a few rows of hidden states by the LM head, a [vocab, hidden] weight far larger than the CPU's
caches (GPT-2's: 50,257 x 768 floats, 154 MB), so that product is bound by streaming the weight from memory. On x86 CPUs
PyTorch sends float32 `F.linear` to MKL's GEMM, which on these skinny shapes reaches well under the memory bandwidth;
oneDNN's matmul on the *same, unpacked* weight is about 2x faster (benchmarks/README.md has the measurements). Nothing
is packed or copied, so nothing can go stale when weights change (an in-place write through `.data` does not bump a
tensor's version counter, so a packed copy could not be trusted).

Only the head is switched: its logits differ from `F.linear`'s by the rounding of one dot product (oneDNN sums in
another order; about 3e-7 relative in the tests), and generated ids are identical. Switching every linear layer was
measured too: no clear further gain, and the decoder's later layers amplify the rounding (up to 6e-5 relative on tiny
random decoders). `torch.backends.mkldnn.enabled = False` (PyTorch's own switch) turns this off.

The head is wrapped PEFT style (`OneDNNLinear(base_layer)`) for the duration of a block and put back afterwards, so
checkpoints and state dicts never see it.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator

import torch
from torch import nn

_linear_pointwise = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def onednn_available() -> bool:
    """Whether linears can run on oneDNN here: an x86 CPU build with oneDNN, and PyTorch's switch for it on."""
    backend = torch.backends.mkldnn
    return _X86 and _linear_pointwise is not None and backend.is_available() and backend.enabled


class OneDNNLinear(nn.Module):
    """Runs `base_layer` (an `nn.Linear`) through oneDNN's matmul, without gradients.

    Falls back to `base_layer` itself where oneDNN would change the semantics: under autograd, under CPU autocast, or
    for inputs of another dtype.

    Args:
        base_layer (`nn.Linear`): the layer to run; its weight is read at every call, never copied.
    """

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        weight = self.base_layer.weight  # [out, in]
        if (
            x.dtype != weight.dtype
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            or torch.is_autocast_enabled("cpu")
        ):
            return self.base_layer(x)
        return _linear_pointwise(x, weight, self.base_layer.bias, "none", [], "")


def _eligible(module: nn.Module) -> bool:
    # The exact type only: subclasses (quantized linears, adapters) have their own forward. Modules with hooks are left
    # alone, since the hooks may move or swap weights (accelerate's offloading does).
    if type(module) is not nn.Linear:
        return False
    if module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"):
        return False
    return module.weight.device.type == "cpu" and module.weight.dtype == torch.float32


@contextlib.contextmanager
def onednn_lm_head(model: nn.Module) -> Iterator[bool]:
    """Within the block, `model`'s output embeddings run through oneDNN (see the module docstring).

    Args:
        model (`nn.Module`): a model with `get_output_embeddings()` (a transformers causal LM).

    Yields:
        `bool`: whether the head was wrapped (not where oneDNN is unavailable or off, or the head is not a plain
        float32 CPU `nn.Linear`).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    swapped: list[tuple[nn.Module, str]] = []
    if head is not None and onednn_available() and _eligible(head):
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if child is head:
                    setattr(parent, name, OneDNNLinear(head))
                    swapped.append((parent, name))
    try:
        yield bool(swapped)
    finally:
        for parent, name in swapped:
            setattr(parent, name, head)
