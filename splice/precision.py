"""Reduced precision for inference: bf16 end to end, and int8 weight-only layers on PyTorch's own int8 kernel.

At batch 1 a decoding step is bound by reading the weights from memory (benchmarks/README.md, "Reduced precision"),
so fewer bytes per weight is the lever: bf16 halves them, int8 quarters the layers' share.

- `dtype="bf16"` is the model cast to bfloat16 (`resolve_dtype` maps the short names `from_pretrained` accepts);
- `quantize(model, "int8")` swaps every `nn.Linear` and GPT-2 `Conv1D` of encoder, decoder and conditioning for an
  [`Int8WeightOnlyLinear`]: weights rounded per output channel to int8 (symmetric, absmax scale), activations in the
  model's dtype, the product on `torch._weight_int8pack_mm` (PyTorch's int8-weight matmul; on a CPU it dequantizes
  inside the kernel, so eager mode gains without compilation; in an fp32 model the layers' inputs are rounded to bf16
  for it, its fast path: `splice._compat.int8pack_mm_dtype`). `torch.ao`'s `quantize_dynamic({nn.Linear})` and
  torchao's default filter only see `nn.Linear`, which in GPT-2 is just the LM head: the blocks are `Conv1D`.
- The LM head (output embeddings, tied to the input embeddings in GPT-2) and the embeddings keep the model's dtype:
  the head decides every token, and measured agreement with fp32 is what the mode is judged by (`include_lm_head=True`
  quantizes it too, for measuring what that costs).

A quantized model generates like any other; it is not saved (`check_saveable` says how to get it back): save the
model before quantizing and pass `quantize="int8"` to `from_pretrained` when loading it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from ._compat import int8pack_mm_dtype

DTYPE_ALIASES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
QUANTIZE_MODES = ("int8",)
# Up to this many rows (decoding steps: one per sequence) the int8 kernel runs; above it (an encoder pass, a prompt,
# the cross-attention keys/values over the encoder states) the weight is dequantized once per call and multiplied by
# the dtype's GEMM. Measured at K=384, N=1152..1536, one thread, bf16: the kernel takes 0.03 ms at 1 row, about what a
# dequantize + GEMM takes (0.3 ms) at 16, and 10-15x longer than it at 197 rows (an encoder pass of ViT-224/16).
KERNEL_MAX_ROWS = 16


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """`"bf16"` / `"fp32"` / `"fp16"` (and their long names) as a `torch.dtype`; anything else unchanged (transformers'
    `from_pretrained` also takes `"auto"`)."""
    if isinstance(dtype, str) and dtype.lower() in DTYPE_ALIASES:
        return DTYPE_ALIASES[dtype.lower()]
    return dtype


class Int8WeightOnlyLinear(nn.Module):
    """A linear layer with int8 weights (one scale per output channel) and activations in their own dtype.

    Built from an `nn.Linear` (weight `[out, in]`) or a GPT-2 `Conv1D` (weight `[in, out]`); the output is
    `x @ (weight_int8 * weight_scale).T + bias` computed by `torch._weight_int8pack_mm` for decoding steps (at most
    `KERNEL_MAX_ROWS` rows, on a CPU), else by `F.linear` on the dequantized weight. Inference only: the weights are
    buffers, nothing trains.

    Args:
        weight (`torch.Tensor` of shape `[out, in]`): the floating-point weight to round.
        bias (`torch.Tensor` of shape `[out]`, *optional*): kept in its dtype.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        w = weight.detach().float().contiguous()  # [out, in]
        scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)  # [out]
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        # In the weight's dtype, so that `.to(dtype)` moves it with the rest of the model (the kernel takes the scales
        # in the activations' dtype anyway).
        self.register_buffer("weight_scale", scale.to(weight.dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_module(cls, module: nn.Module) -> Int8WeightOnlyLinear:
        """From an `nn.Linear` or a GPT-2 `Conv1D` (whose weight is stored transposed)."""
        weight = module.weight.t() if isinstance(module, Conv1D) else module.weight
        return cls(weight, module.bias)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight the layer multiplies by, `[out, in]`, in `dtype`."""
        return self.weight_int8.to(dtype) * self.weight_scale.to(dtype)[:, None]

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight `[out, in]` in the model's dtype, for code that reads a layer's `weight` (its dtype,
        device or values); computed on each access, the layer itself never uses it."""
        return self.dequantized_weight(self.weight_scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        rows = x.reshape(-1, self.in_features)  # [N, in]
        kernel_dtype = int8pack_mm_dtype(rows, self.weight_int8) if rows.shape[0] <= KERNEL_MAX_ROWS else None
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if kernel_dtype is not None:
            scale = self.weight_scale.to(kernel_dtype)
            out = torch._weight_int8pack_mm(rows.to(kernel_dtype).contiguous(), self.weight_int8, scale).to(x.dtype)
            if bias is not None:
                out = out + bias
        else:
            out = F.linear(rows, self.dequantized_weight(x.dtype), bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _quantizable(module: nn.Module) -> bool:
    # nn.Linear and its subclasses that keep its computation (splice's OneDNNLinear); Conv1D is GPT-2's linear.
    # Modules with hooks are left alone: the hooks may move or swap weights (accelerate's offloading does).
    if not isinstance(module, (nn.Linear, Conv1D)) or isinstance(module, Int8WeightOnlyLinear):
        return False
    return not (module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"))


def _output_embeddings(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if getter is not None else None


@torch.no_grad()
def quantize(model: nn.Module, mode: str = "int8", *, include_lm_head: bool = False) -> nn.Module:
    """Swap `model`'s linear layers for int8 weight-only ones, in place (for inference).

    Every `nn.Linear` and GPT-2 `Conv1D` is swapped (encoder, decoder, what conditioning adds), except the output
    embeddings (the LM head) unless `include_lm_head`; embeddings, norms and convolutions keep their dtype. Calling it
    again on a quantized model changes nothing.

    Args:
        model (`nn.Module`): a splice model (or any module; its `get_output_embeddings()` is the head, if it has one).
        mode (`str`): `"int8"`, the one mode so far.
        include_lm_head (`bool`): quantize the LM head as well (it reads the most bytes per step, and decides tokens).

    Returns:
        `nn.Module`: the same model, quantized and in eval mode.
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize={mode!r} is not a quantization mode; choose one of {QUANTIZE_MODES}.")
    head = _output_embeddings(model)
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if _quantizable(child) and (include_lm_head or child is not head)
    ]
    for parent, name, child in targets:
        quantized = Int8WeightOnlyLinear.from_module(child).to(child.weight.device)
        setattr(parent, name, quantized)
    return model.eval()


def is_quantized(model: nn.Module) -> bool:
    """Whether `quantize` swapped any of `model`'s layers."""
    return any(isinstance(module, Int8WeightOnlyLinear) for module in model.modules())


def check_saveable(model: nn.Module) -> None:
    """Raise a `ValueError` saying how to get a quantized model back, instead of writing a checkpoint that no
    `from_pretrained` could read (int8 weights under other names)."""
    if is_quantized(model):
        raise ValueError(
            "This model is quantized (int8 weights), and splice saves only unquantized checkpoints. Save the model "
            "before quantizing, and re-quantize when loading: `SpliceModel.from_pretrained(path, quantize='int8')` "
            "or `splice.quantize(model, 'int8')`."
        )


def apply_precision(model: Any, dtype: str | torch.dtype | None = None, quantize_mode: str | None = None) -> Any:
    """`model` cast to `dtype` (if given) and then quantized with `quantize_mode` (if given): one call for both."""
    dtype = resolve_dtype(dtype)
    if isinstance(dtype, torch.dtype):
        model = model.to(dtype)
    return quantize(model, quantize_mode) if quantize_mode is not None else model
