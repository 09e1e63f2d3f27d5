"""`--quantize int8`: onnxruntime dynamic quantization (int8 weights, activations quantized per call), LM head fp32.

The LM head is left in float32: its rows are the logits that pick each token, and a coarse int8 scale there flips
near-tied tokens while saving little on small vocabularies (`keep_lm_head=False` quantizes it too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx


def _lm_head_nodes(model: onnx.ModelProto, vocab_size: int) -> list[str]:
    """Names of the MatMul/Gemm nodes (in any subgraph) whose weight has a dimension of the vocabulary's size."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    found: list[str] = []

    def visit(graph: onnx.GraphProto) -> None:
        shapes.update({t.name: tuple(t.dims) for t in graph.initializer})
        for node in graph.node:
            if node.op_type in ("MatMul", "Gemm") and any(vocab_size in shapes.get(i, ()) for i in node.input):
                found.append(node.name)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)

    visit(model.graph)
    return found


def quantize_int8(
    out: Path, files: list[str], model: Any, suffix: str = "_quantized", keep_lm_head: bool = True
) -> dict[str, str]:
    """Write `NAME{suffix}.onnx` next to each of `files`; returns `{"encoder": ..., "decoder": ...}`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    written = []
    for name in files:
        source = out / name
        written.append(name.replace(".onnx", f"{suffix}.onnx"))  # relative to `out`, as `files`
        target = out / written[-1]
        exclude = _lm_head_nodes(onnx.load(str(source)), model.config.decoder.vocab_size) if keep_lm_head else []
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    return {"encoder": written[0], "decoder": written[1]}
