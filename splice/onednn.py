"""The LM head on oneDNN while generating on a CPU.

A decode step multiplies a few rows of hidden states by the LM head, a [vocab, hidden] weight far larger than the CPU's
caches (GPT-2's: 50,257 x 768 floats, 154 MB), so that product is bound by streaming the weight from memory. On x86 CPUs
PyTorch sends float32 `F.linear` to MKL's GEMM, which on these skinny shapes reached well under the memory bandwidth on
an AMD EPYC, where oneDNN's matmul on the *same, unpacked* weight was about 2x faster; on an Intel Xeon the two are
equal (benchmarks/README.md has the measurements). Nothing is packed or copied, so nothing can go stale when weights
change (an in-place write through `.data` does not bump a tensor's version counter, so a packed copy could not be
trusted).

Only the head is switched: its logits differ from `F.linear`'s by the rounding of one dot product (oneDNN sums in
another order; tests/test_onednn.py bounds it), and generated ids are identical. Switching every linear layer was
tried too (benchmarks/README.md): no clear further gain, and the decoder's later layers amplify the rounding.
`torch.backends.mkldnn.enabled = False` (PyTorch's own switch) turns this off.

The head is swapped once, when the model is built, for a `OneDNNLinear` sharing its parameters:
nothing in the module tree changes during `generate` (two threads may generate at once), and checkpoints never see
it: the wrapper's state-dict keys are the layer's own. It takes oneDNN only for decoding-step shapes (one new position
per row, no autograd); every other call is the plain layer's, so forward passes stay bit-identical to transformers'.
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn

_linear_pointwise = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
# Fixed for the process; read once, since `torch.compile` does not trace `torch.backends.mkldnn.is_available()`.
_BUILT_WITH_ONEDNN = _X86 and _linear_pointwise is not None and torch.backends.mkldnn.is_available()


@torch.library.custom_op("splice::step_linear", mutates_args=())
def step_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A decoding step's head product as one opaque op, so that `torch.compile` keeps the eager kernel in a compiled
    decoding step: oneDNN's matmul on the unpacked weight in float32 (inductor cannot lower `mkldnn._linear_pointwise`
    with an unpacked weight and would fall back to MKL's slower GEMM), `torch.mv` for one bfloat16 row (inductor's
    own bf16 matrix-vector code was slower than eager: benchmarks/README.md)."""
    return _step_product(x, weight, bias)


@step_linear.register_fake
def _step_linear_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _step_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if x.dtype == torch.bfloat16:  # one row: a matrix-vector product ([out, in] @ [in])
        out = torch.mv(weight, x.reshape(-1))  # [out]
        return (out if bias is None else out + bias).view(*x.shape[:-1], weight.shape[0])
    return _linear_pointwise(x, weight, bias, "none", [], "")


def onednn_available() -> bool:
    """Whether linears can run on oneDNN here: an x86 CPU build with oneDNN, and PyTorch's switch for it on."""
    return _BUILT_WITH_ONEDNN and torch.backends.mkldnn.enabled


class OneDNNLinear(nn.Linear):
    """An `nn.Linear` that runs through oneDNN's matmul on decoding steps, without gradients.

    It shares the parameters of the layer it is made from (`weight` is that layer's `weight`, ties included), so its
    state-dict keys are the layer's own. In bfloat16 a single row (batch 1) is a `torch.mv`. Everything else —
    training, autocast, other dtypes, several positions per row, oneDNN switched off — is
    `F.linear`, exactly the layer's computation.

    Args:
        base_layer (`nn.Linear`): the layer whose parameters to use; they are read at every call, never copied.
    """

    def __init__(self, base_layer: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.weight = base_layer.weight
        self.bias = base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., T, in] -> [..., T, out]
        if (
            x.dim() < 2
            or x.shape[-2] != 1  # a decoding step feeds one new position per row
            or x.dtype != self.weight.dtype
            or x.device.type != "cpu"
            or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            or torch.is_autocast_enabled("cpu")
        ):
            return F.linear(x, self.weight, self.bias)
        one_bf16_row = x.dtype == torch.bfloat16 and x.numel() == self.in_features
        if not one_bf16_row and (x.dtype != torch.float32 or not onednn_available()):
            return F.linear(x, self.weight, self.bias)
        # bf16, one row (batch 1): a matrix-vector product streams the weight faster than bf16 `F.linear`, which is
        # slower than fp32's at one row (benchmarks/README.md, "Reduced precision"); fp32: oneDNN's matmul.
        if torch.compiler.is_compiling():  # a compiled decoding step (splice/models/compiled_step.py)
            return step_linear(x, self.weight, self.bias)
        return _step_product(x, self.weight, self.bias)


def _eligible(module: nn.Module) -> bool:
    # The exact type only: subclasses (quantized linears, adapters) have their own forward. Modules with hooks are left
    # alone, since the hooks may move or swap weights (accelerate's offloading does). Device and dtype are checked at
    # each call instead: `from_pretrained` builds on the meta device, and a model may move to a GPU or to bf16 later.
    if type(module) is not nn.Linear:
        return False
    return not (module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"))


def use_onednn_lm_head(model: nn.Module) -> bool:
    """Wrap `model`'s output embeddings in a [`OneDNNLinear`] (once, at build time) where oneDNN can run them.

    Args:
        model (`nn.Module`): a model with `get_output_embeddings()` / `set_output_embeddings()` (a causal LM).

    Returns:
        `bool`: whether the head was wrapped (not on non-x86 CPUs, builds without oneDNN, or heads that are not a plain
        `nn.Linear`; a wrapped head on a GPU or in another dtype runs `F.linear`).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or isinstance(head, OneDNNLinear) or not onednn_available() or not _eligible(head):
        return False
    model.set_output_embeddings(OneDNNLinear(head))
    return True
