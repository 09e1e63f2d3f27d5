"""Join the two exported decoder graphs into optimum's `decoder_model_merged.onnx`.

The first-step graph (no past) and the cached-step graph become the two branches of one `If` on the boolean input
`use_cache_branch` (`[1]`); the weights both branches read are stored once, in the outer graph. Only the exported
graphs' nodes are moved; no operator is written here. Uses `onnx` alone (no torch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper

USE_CACHE_BRANCH = "use_cache_branch"


def _tensor_key(tensor: TensorProto) -> tuple:
    data = numpy_helper.to_array(tensor)
    return tensor.data_type, tuple(tensor.dims), hashlib.sha1(data.tobytes()).hexdigest()


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            graphs.append(attribute.g)
        graphs.extend(attribute.graphs)
    return graphs


def _rename_uses(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename every use of a value in `graph` and its subgraphs (outer-scope references included)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for subgraph in _subgraphs(node):
            _rename_uses(subgraph, renames)


def _branch(graph: onnx.GraphProto, tag: str, shared: dict[str, str], outputs: list[str]) -> onnx.GraphProto:
    """The graph as an `If` branch: no inputs or initializers (read from the outer scope), private value names, and
    `outputs` in that order (an output the branch does not compute is an `Identity` of the outer value)."""
    renames = dict(shared)
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name:
                renames[name] = f"{tag}/{name}"
                node.output[i] = renames[name]
    _rename_uses(graph, renames)
    produced = {name for node in graph.node for name in node.output}
    nodes = list(graph.node)
    branch_outputs = []
    by_name = {value.name: value for value in graph.output}
    for name in outputs:
        value = by_name[name]
        inner = renames.get(name, name)
        if inner not in produced:  # the graph returns one of its inputs unchanged: copy it inside the branch
            nodes.append(helper.make_node("Identity", [inner], [f"{tag}/{name}/identity"]))
            inner = f"{tag}/{name}/identity"
        out = onnx.ValueInfoProto()
        out.CopyFrom(value)
        out.name = inner
        branch_outputs.append(out)
    return helper.make_graph(nodes, f"{tag}_branch", [], branch_outputs)


def _loose_output(value: onnx.ValueInfoProto, index: int) -> onnx.ValueInfoProto:
    """The outer output: the branch's element type and rank, symbolic lengths (the branches' lengths differ)."""
    dims = []
    for position, dim in enumerate(value.type.tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.dim_param == "batch_size":
            dims.append("batch_size")
        else:
            dims.append(f"{value.name}_dim{position}")
    return helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, dims)


def merge_decoders(
    no_past: onnx.ModelProto, with_past: onnx.ModelProto, input_names: list[str], output_names: list[str]
) -> onnx.ModelProto:
    """
    One model whose `If` on `use_cache_branch` runs `with_past` (true) or `no_past` (false).

    Args:
        no_past: the first-step graph (past inputs unused).
        with_past: the cached-step graph.
        input_names: the merged graph's inputs, in order (`use_cache_branch` is appended).
        output_names: its outputs, in order (both graphs return them all).
    """
    shared: dict[str, str] = {}  # initializer name in either graph -> its one outer name
    initializers: dict[tuple, TensorProto] = {}
    taken: set[str] = set()
    for tag, model in (("no_past", no_past), ("with_past", with_past)):
        renames: dict[str, str] = {}
        for tensor in model.graph.initializer:
            key = _tensor_key(tensor)
            if key not in initializers:
                name = tensor.name if tensor.name not in taken else f"{tag}/{tensor.name}"
                copy = TensorProto()
                copy.CopyFrom(tensor)
                copy.name = name
                initializers[key] = copy
                taken.add(name)
            renames[tensor.name] = initializers[key].name
        _rename_uses(model.graph, renames)
        shared.update({new: new for new in renames.values()})

    inputs: dict[str, onnx.ValueInfoProto] = {}
    for model in (with_past, no_past):
        for value in model.graph.input:
            inputs.setdefault(value.name, value)
    missing = [name for name in input_names if name not in inputs]
    if missing:
        raise ValueError(f"Neither decoder graph reads the inputs {missing}: the export lost them.")
    outer_inputs = [inputs[name] for name in input_names]
    outer_inputs.append(helper.make_tensor_value_info(USE_CACHE_BRANCH, TensorProto.BOOL, [1]))

    then_branch = _branch(with_past.graph, "with_past", shared, output_names)
    else_branch = _branch(no_past.graph, "no_past", shared, output_names)
    node = helper.make_node(
        "If", [USE_CACHE_BRANCH], output_names, then_branch=then_branch, else_branch=else_branch, name="optimum::if"
    )
    by_name = {value.name: value for value in no_past.graph.output}
    outputs = [_loose_output(by_name[name], i) for i, name in enumerate(output_names)]
    graph = helper.make_graph([node], "decoder_model_merged", outer_inputs, outputs, list(initializers.values()))
    opset = max(
        entry.version
        for model in (no_past, with_past)
        for entry in model.opset_import
        if entry.domain in ("", "ai.onnx")
    )
    merged = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="splice")
    merged.ir_version = max(no_past.ir_version, with_past.ir_version)
    onnx.checker.check_model(merged)
    return merged


def merge_decoder_files(
    no_past: str | Path, with_past: str | Path, target: str | Path, input_names: list[str], output_names: list[str]
) -> None:
    """`merge_decoders` on two `.onnx` files, written to `target`."""
    merged = merge_decoders(onnx.load(str(no_past)), onnx.load(str(with_past)), input_names, output_names)
    onnx.save(merged, str(target))
