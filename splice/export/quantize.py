"""`--quantize int8`: onnxruntime dynamic quantization (int8 weights, activations quantized per call), LM head fp32.

Each graph is quantized on its own: the encoder, and the decoder's two branch graphs *before* they are merged, so
that `merge.py` stores each int8 weight once (the two branches quantize the same float weights to the same bytes).
Quantizing the merged file instead leaves its float initializers in place: onnxruntime's quantizer adds int8 copies
inside the `If` branches without removing the originals the outer graph holds, and the file does not shrink.

The LM head is left in float32 by default: its rows are the logits that pick each token, and a coarse int8 scale
there flips near-tied tokens (`benchmarks/README.md` has the agreement measured both ways). Token and position
embeddings (`Gather`) are quantized too: they are most of a small decoder's bytes.
"""

from __future__ import annotations

from pathlib import Path

import onnx

OP_TYPES = ["MatMul", "Gemm", "Gather"]


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


def quantize_graph(source: str | Path, target: str | Path, vocab_size: int, keep_lm_head: bool = True) -> None:
    """Write `source` with int8 weights to `target` (the LM head, the MatMul/Gemm with a vocabulary-sized weight,
    kept fp32 unless `keep_lm_head=False`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = _lm_head_nodes(onnx.load(str(source)), vocab_size) if keep_lm_head else []
    quantize_dynamic(
        str(source), str(target), weight_type=QuantType.QInt8, nodes_to_exclude=exclude, op_types_to_quantize=OP_TYPES
    )
