"""`splice.export.export_onnx`: a splice model (or its directory) -> a self-contained ONNX directory (optimum's layout).

`OUT_DIR` holds `onnx/encoder_model.onnx`, one `onnx/decoder_model_merged.onnx` (boolean `use_cache_branch`: the first
step or a cached step, weights stored once), `config.json`, `generation_config.json`, the tokenizer / image-processor
files and `splice_onnx.json` (the format version and the graphs' layout). `splice_onnx` (no torch) runs it; the graphs
sit in `onnx/` where transformers.js looks for them, so `from_pretrained(OUT_DIR)` loads the directory as it is.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splice_onnx import FORMAT_VERSION, MANIFEST

from .._version import __version__
from .graphs import DecoderStep, EncoderGraph, Layout, detect_layout, export_graph
from .windows import example_size, has_windows, min_side

GRAPHS_DIR = "onnx"  # transformers.js's `subfolder` default (the hub's converted repos use it too)
ENCODER_FILE = f"{GRAPHS_DIR}/encoder_model.onnx"
DECODER_FILE = f"{GRAPHS_DIR}/decoder_model_merged.onnx"
QUANTIZED_SUFFIX = "_quantized"
QUANTIZED_FILES = {
    "encoder": ENCODER_FILE.replace(".onnx", f"{QUANTIZED_SUFFIX}.onnx"),
    "decoder": DECODER_FILE.replace(".onnx", f"{QUANTIZED_SUFFIX}.onnx"),
}
DEFAULT_OPSET = 17
# What a deployment needs besides the graphs (whichever the model's directory has).
PROCESSOR_FILES = (
    "preprocessor_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja",
)  # fmt: skip
LOGITS_ATOL = 1e-4
DATASTORE_DIR = "datastore"  # SmallCap's retrieval datastore, next to the model (as `splice train` saves it)

__all__ = ["DEFAULT_OPSET", "FORMAT_VERSION", "MANIFEST", "ExportError", "export_onnx", "load_model"]


class ExportError(RuntimeError):
    """The export cannot be made, or does not reproduce the PyTorch model (the message names what and the fix)."""


def load_model(model_or_dir: Any) -> torch.nn.Module:
    """A splice model in eval mode, fp32, from an instance or a directory saved by splice or transformers."""
    if isinstance(model_or_dir, torch.nn.Module):
        model = model_or_dir
    else:
        from ..registry import model_class

        folder = Path(model_or_dir)
        if not (folder / "config.json").is_file():
            raise ExportError(
                f"model={str(model_or_dir)!r}: no config.json there; pass a directory written by "
                "`model.save_pretrained` or `splice train` (its output_dir)."
            )
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        try:
            cls = model_class(model_type)
        except ValueError as error:
            raise ExportError(f"model={str(folder)!r}: {error}") from None
        model = cls.from_pretrained(str(folder))
    if not hasattr(model, "conditioning"):
        raise ExportError(
            f"{type(model).__name__} is not a splice model; load the directory with splice (e.g. "
            "`splice.VisionEncoderDecoderModel.from_pretrained`) or pass its path."
        )
    model = model.float().eval()
    # transformers' sdpa path passes `enable_gqa`, which the TorchScript exporter cannot convert (Llama, Qwen2 ...);
    # eager attention is the same computation written with matmuls, and what optimum exports too.
    if getattr(model.decoder.config, "_attn_implementation", "eager") != "eager":
        model.decoder.set_attn_implementation("eager")
    return model


def _encoder_names(model: torch.nn.Module) -> list[str]:
    name = model.encoder.main_input_name
    return [name, "attention_mask"] if name == "input_ids" or _audio_mask(model) else [name]


def _audio_mask(model: torch.nn.Module) -> bool:
    """Audio encoders that take a padding mask: Wav2Vec2-like with layer-norm feature extraction (group norm mixes
    padded samples into every frame, so transformers' feature extractors give those no mask either)."""
    config = model.config.encoder
    return model.encoder.main_input_name == "input_values" and getattr(config, "feat_extract_norm", None) == "layer"


def example_encoder_inputs(model: torch.nn.Module, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random encoder inputs for tracing and checking (text: right-padded rows, so the mask matters)."""
    gen = torch.Generator().manual_seed(seed)
    config = model.config.encoder
    name = model.encoder.main_input_name
    if name == "pixel_values":
        size = getattr(config, "image_size", 224)
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if has_windows(config):  # window attention: a size whose maps take every padding branch (windows.py)
            height, width = example_size(config)
        return {name: torch.randn(batch, getattr(config, "num_channels", 3), height, width, generator=gen)}
    if name == "input_ids":
        ids = torch.randint(3, min(config.vocab_size, 1000), (batch, 7), generator=gen)
        mask = torch.ones_like(ids)
        mask[1:, 4:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    if name == "input_values":  # raw audio (Wav2Vec2-like), one second at 16 kHz; the later rows padded (with a mask)
        audio = torch.randn(batch, 16000, generator=gen)
        if not _audio_mask(model):
            return {name: audio}
        mask = torch.ones_like(audio, dtype=torch.long)
        mask[1:, 12000:] = 0
        return {name: audio * mask, "attention_mask": mask}
    raise ExportError(
        f"encoder input {name!r} ({type(model.encoder).__name__}): splice export handles image (pixel_values), "
        "audio (input_values) and text (input_ids) encoders so far; export such a composite, or open an issue for "
        "this encoder."
    )


def _past_inputs(layout: Layout, present: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    return dict(zip(layout.past_names(), present))


def _copy_processor_files(source: Path | None, out: Path) -> None:
    if source is None or not source.is_dir():
        return
    for name in PROCESSOR_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    if not (out / "tokenizer.json").is_file() and (source / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer  # writes tokenizer.json, which the torch-free runtime reads

        AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(out))


def export_onnx(
    model_or_dir: Any,
    out_dir: str | Path,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    check: bool = True,
    progress: Callable[[str], None] | None = print,
    quantize_lm_head: bool = False,
) -> Path:
    r"""
    Export a splice model to ONNX in optimum's layout, then load the export and check it against PyTorch.

    Args:
        model_or_dir: a splice model, or a directory saved by splice / transformers (TrOCR, vit-gpt2, bert2bert ...).
        out_dir: where to write (created; existing files of the same names are replaced).
        opset: the ONNX opset (default 17).
        quantize: `"int8"` also writes `*_quantized.onnx` (onnxruntime dynamic quantization of the encoder and of the
            decoder's two branches before they are merged, so each int8 weight is stored once; LM head kept fp32).
        check: run both graphs on a generated input and compare logits (|diff| <= 1e-4) and greedy ids with PyTorch;
            a mismatch raises `ExportError`.
        progress: called with one line per stage (`None`: silent).
        quantize_lm_head: with `quantize="int8"`, quantize the LM head too (smaller, and fewer tokens agree).

    Returns:
        `Path`: `out_dir`.
    """
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize={quantize!r} is not supported; use 'int8' (onnxruntime dynamic) or leave it out.")
    if not 14 <= opset <= 20:
        raise ExportError(f"opset={opset} is out of range; use 14 to 20 (default {DEFAULT_OPSET}).")
    say = progress or (lambda line: None)
    started = time.perf_counter()
    model = load_model(model_or_dir)
    source = Path(model_or_dir) if isinstance(model_or_dir, str | Path) else None
    if source is None and isinstance(getattr(model.config, "name_or_path", None), str):
        source = Path(model.config.name_or_path)
    out = Path(out_dir)
    (out / GRAPHS_DIR).mkdir(parents=True, exist_ok=True)

    names = _encoder_names(model)
    inputs = example_encoder_inputs(model)
    encoder = EncoderGraph(model, names)
    with torch.no_grad():
        states = encoder(*inputs.values())
    mask = inputs.get("attention_mask")
    layout = detect_layout(model, states, mask)
    layout.encoder_inputs = names
    layout.decoder_mask = hasattr(model, "prompts")  # SmallCap: left-padded retrieval prompts
    say(f"[1/5] encoder: {type(model.encoder).__name__} -> {ENCODER_FILE}")
    export_graph(encoder, tuple(inputs.values()), str(out / ENCODER_FILE), names, ["last_hidden_state"], layout,
                 False, opset)  # fmt: skip

    say(f"[2/5] decoder: {type(model.decoder).__name__} ({model.config.conditioning}) -> {DECODER_FILE}")
    int8 = (out / QUANTIZED_FILES["decoder"], not quantize_lm_head) if quantize else None
    _export_decoder(model, layout, states, mask, out / DECODER_FILE, opset, int8)

    say("[3/5] config, generation config, processor files")
    model.config.save_pretrained(str(out))
    model.generation_config.save_pretrained(str(out))
    _copy_processor_files(source, out)
    manifest = {
        "format_version": FORMAT_VERSION,
        "splice_version": __version__,
        "conditioning": model.config.conditioning,
        "decoder_model_type": model.config.decoder.model_type,
        "vocab_size": model.config.decoder.vocab_size,
        "layout": layout.to_json(),
        "files": {"encoder": ENCODER_FILE, "decoder": DECODER_FILE},
        "opset": opset,
    }
    if has_windows(model.config.encoder):
        manifest["min_image_side"] = min_side(model.config.encoder)
    if layout.decoder_mask:
        manifest["decoder_prompt"] = _prompt_settings(model)
        if source is not None and (source / DATASTORE_DIR).is_dir():  # SmallCap's datastore travels with it
            shutil.copytree(source / DATASTORE_DIR, out / DATASTORE_DIR, dirs_exist_ok=True)
            manifest["decoder_prompt"]["datastore"] = DATASTORE_DIR
    if quantize:
        from .quantize import quantize_graph

        say(f"[4/5] int8 dynamic quantization (LM head {'int8' if quantize_lm_head else 'kept fp32'})")
        quantize_graph(out / ENCODER_FILE, out / QUANTIZED_FILES["encoder"], model.config.decoder.vocab_size)
        manifest["quantized_files"] = dict(QUANTIZED_FILES)
    else:
        say("[4/5] quantization: none")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    if check:
        say("[5/5] checking the export against PyTorch")
        diff = check_export(model, out)
        say(f"      max |logits diff| = {diff:.2e}; greedy ids equal")
    else:
        say("[5/5] check skipped")
    say(f"exported to {out} in {time.perf_counter() - started:.1f} s")
    return out


def _export_decoder(
    model: torch.nn.Module,
    layout: Layout,
    states: torch.Tensor,
    mask: torch.Tensor | None,
    path: Path,
    opset: int,
    int8: tuple[Path, bool] | None = None,
) -> None:
    """Trace the first step and a cached step, merge them into `path`; `int8=(path, keep_lm_head)`: also quantize
    both graphs and merge those (quantize.py says why before merging)."""
    from .merge import merge_decoder_files
    from .quantize import quantize_graph

    batch = states.shape[0]
    ids = torch.randint(3, model.config.decoder.vocab_size, (batch, 3), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = model.config.decoder_start_token_id or 0
    extra = [mask] if layout.encoder_mask else []
    step_extra = list(extra)
    if layout.decoder_mask:  # a left-padded prompt in the example, so the mask is traced as data
        prompt_mask = torch.ones_like(ids)
        prompt_mask[1:, :1] = 0
        step_mask = torch.cat([prompt_mask, torch.ones_like(ids[:, :1])], dim=1)
        extra += [prompt_mask, decoder_positions(prompt_mask, ids.shape[1])]
        step_extra += [step_mask, decoder_positions(step_mask, 1)]
    first, step = DecoderStep(model, layout, False), DecoderStep(model, layout, True)
    with torch.no_grad():
        present = first(ids, states, *extra)[1:]
    presents = [name.replace("past_key_values", "present") for name in layout.past_names()]
    output_names = ["logits", *presents]
    past = _past_inputs(layout, present)
    with tempfile.TemporaryDirectory() as tmp:
        export_graph(first, (ids, states, *extra), f"{tmp}/first.onnx", layout.decoder_inputs, output_names, layout,
                     False, opset)  # fmt: skip
        export_graph(step, (ids[:, -1:], states, *step_extra, *past.values()), f"{tmp}/step.onnx",
                     layout.decoder_inputs + list(past), output_names, layout, True, opset)  # fmt: skip
        names = layout.decoder_inputs + layout.past_names()
        merge_decoder_files(f"{tmp}/first.onnx", f"{tmp}/step.onnx", path, names, output_names)
        if int8 is not None:
            vocab_size = model.config.decoder.vocab_size
            for name in ("first", "step"):
                quantize_graph(f"{tmp}/{name}.onnx", f"{tmp}/{name}_int8.onnx", vocab_size, int8[1])
            merge_decoder_files(f"{tmp}/first_int8.onnx", f"{tmp}/step_int8.onnx", int8[0], names, output_names)


def decoder_positions(mask: torch.Tensor, length: int) -> torch.Tensor:
    """The positions of the last `length` tokens under a left-padded decoder mask: real tokens counted from 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]


def _prompt_settings(model: torch.nn.Module) -> dict[str, Any]:
    """SmallCap's prompts, for a runtime without the PyTorch model: the no-retrieval prompt, the template, k."""
    from ..models.smallcap import NO_RETRIEVAL_PROMPT

    config = model.config
    return {"no_retrieval": NO_RETRIEVAL_PROMPT, "template": config.prompt_template, "k": config.retrieval_k}


def check_export(model: torch.nn.Module, out: Path, atol: float = LOGITS_ATOL) -> float:
    """Both graphs' logits against PyTorch on a generated input, and 4 greedy ids; returns the largest logit diff."""
    from splice_onnx import OnnxSeq2Seq

    runtime = OnnxSeq2Seq.from_pretrained(out)
    inputs = example_encoder_inputs(model, seed=3)
    feed = {name: tensor.numpy() for name, tensor in inputs.items()}
    diff = runtime_logit_diff(model, runtime, inputs, feed)
    if not diff <= atol:
        raise ExportError(
            f"The export's logits differ from PyTorch by {diff:.2e} (> {atol:.0e}) in {out}: an operator is exported "
            "differently. Re-export with another --opset, and report the decoder family if it persists."
        )
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=4, num_beams=1, do_sample=False).numpy()
    got = runtime.generate(feed, max_new_tokens=4, num_beams=1, do_sample=False)
    if expected.shape != got.shape or not np.array_equal(expected, got):
        raise ExportError(f"Greedy ids differ from PyTorch in {out}: {got.tolist()} vs {expected.tolist()}.")
    return diff


def runtime_logit_diff(model: torch.nn.Module, runtime: Any, inputs: dict[str, torch.Tensor], feed: dict) -> float:
    """Max |logit diff| of the runtime's first step (3 ids) and a cached step against the PyTorch model."""
    batch = next(iter(inputs.values())).shape[0]
    ids = torch.randint(3, model.config.decoder.vocab_size, (batch, 4), generator=torch.Generator().manual_seed(2))
    ids[:, 0] = model.config.decoder_start_token_id or 0
    with torch.no_grad():
        expected = model(**inputs, decoder_input_ids=ids).logits.numpy()
    states = runtime.encode(feed)
    mask = feed.get("attention_mask")
    logits, past = runtime.decode(ids[:, :3].numpy(), states, mask, None)
    last, _ = runtime.decode(ids[:, 3:].numpy(), states, mask, past)
    return float(max(np.abs(logits - expected[:, :3]).max(), np.abs(last - expected[:, 3:]).max()))
