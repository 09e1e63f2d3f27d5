"""An exported splice directory on onnxruntime: load and validate it, encode, decode one step, generate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import generation

FORMAT_VERSION = 1
MANIFEST = "splice_onnx.json"
USE_CACHE_BRANCH = "use_cache_branch"


class ExportFormatError(ValueError):
    """An exported directory that cannot be run: a missing or corrupt file, or a format this runtime does not read."""


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ExportFormatError(
            f"{path} is missing ({what}); the directory is not a complete splice export. Re-run "
            f"`splice export MODEL_DIR {path.parent}`."
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportFormatError(
            f"{path} is not valid JSON ({error}); re-run `splice export MODEL_DIR {path.parent}`."
        ) from None


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an exported directory, checked: it exists and its format version is one this runtime reads."""
    folder = Path(directory)
    if not folder.is_dir():
        raise ExportFormatError(f"{str(directory)!r} is not a directory; pass the OUT_DIR of `splice export`.")
    manifest = _read_json(folder / MANIFEST, "the export manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        from . import __version__

        raise ExportFormatError(
            f"{folder / MANIFEST}: format_version={version!r}, written by splice {manifest.get('splice_version')}; "
            f"this runtime (splice {__version__}) reads format {FORMAT_VERSION}. Upgrade splice "
            "(`pip install -U splice`) or re-export with this version."
        )
    return manifest


def _session(directory: Path, name: str, providers: list[str] | None, threads: int | None) -> Any:
    import onnxruntime as ort

    path = directory / name
    if not path.is_file():
        raise ExportFormatError(f"{path} is missing; re-run `splice export MODEL_DIR {directory}`.")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail / InvalidProtobuf / RuntimeException
        raise ExportFormatError(
            f"{path} cannot be loaded by onnxruntime ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            f"the file is truncated or corrupt. Re-run `splice export MODEL_DIR {directory}`."
        ) from None


class OnnxSeq2Seq:
    r"""
    A splice model exported by `splice export`, run by onnxruntime (no torch).

    `generate(inputs, **settings)` takes the encoder inputs as NumPy arrays (`pixel_values`, or `input_ids` +
    `attention_mask`) and the settings of `model.generate` (defaults from `generation_config.json`).
    """

    def __init__(self, directory: str | Path, quantized: bool = False, providers: list[str] | None = None,
                 threads: int | None = None):  # fmt: skip
        self.directory = Path(directory)
        self.manifest = read_manifest(directory)
        self.config = _read_json(self.directory / "config.json", "the model config")
        gen_path = self.directory / "generation_config.json"
        self.generation_config = _read_json(gen_path, "the generation config") if gen_path.is_file() else {}
        files = self.manifest["files"]
        if quantized:
            files = self.manifest.get("quantized_files")
            if not files:
                raise ExportFormatError(
                    f"{self.directory} has no int8 graphs; export them with "
                    "`splice export MODEL_DIR OUT_DIR --quantize int8`."
                )
        self.encoder = _session(self.directory, files["encoder"], providers, threads)
        self.decoder = _session(self.directory, files["decoder"], providers, threads)
        layout = self.manifest["layout"]
        self.encoder_inputs: list[str] = layout["encoder_inputs"]
        self.encoder_mask: bool = layout["encoder_mask"]
        self.decoder_mask: bool = layout.get("decoder_mask", False)  # left-padded decoder prompts (SmallCap)
        self._past = [i for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]
        self._outputs = [o.name for o in self.decoder.get_outputs()]
        self._image_processor: Any = None
        self._tokenizer: Any = None

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any) -> OnnxSeq2Seq:
        """Load an exported directory (`quantized=True`: the int8 graphs)."""
        return cls(directory, **kwargs)

    @property
    def main_input_name(self) -> str:
        return self.encoder_inputs[0]

    def encode(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The encoder's `last_hidden_state` `[B, S, E]`."""
        missing = [name for name in self.encoder_inputs if name not in inputs]
        if missing:
            raise ValueError(f"encode() needs {self.encoder_inputs}; missing {missing}.")
        feed = {name: np.asarray(inputs[name]) for name in self.encoder_inputs}
        smallest = self.manifest.get("min_image_side")
        if smallest and min(feed[self.encoder_inputs[0]].shape[-2:]) < smallest:
            raise ValueError(
                f"pixel_values of shape {list(feed[self.encoder_inputs[0]].shape)}: this export's window attention "
                f"needs images of at least {smallest} px a side (smaller feature maps shrink the model's windows, "
                f"which the graph does not do); resize the images to {smallest} px or more."
            )
        for name, array in feed.items():
            feed[name] = array.astype(np.int64 if name in ("input_ids", "attention_mask") else np.float32)
        return self.encoder.run(["last_hidden_state"], feed)[0]

    def decode(
        self,
        ids: np.ndarray,
        states: np.ndarray,
        mask: np.ndarray | None,
        past: dict[str, np.ndarray] | None,
        decoder_mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One decoder call: logits `[N, T, V]` and the new past (`past=None`: the first step). `decoder_mask`
        `[N, past + T]` (graphs exported with a decoder mask: SmallCap): a left-padded prompt's mask, all ones if
        not given; positions count its real tokens."""
        feed: dict[str, np.ndarray] = {"input_ids": np.asarray(ids, dtype=np.int64), "encoder_hidden_states": states}
        if self.encoder_mask:
            feed["encoder_attention_mask"] = np.asarray(mask, dtype=np.int64)
        if self.decoder_mask:
            length = ids.shape[1] + (0 if past is None else _past_length(past))
            full = np.ones((ids.shape[0], length), np.int64) if decoder_mask is None else decoder_mask.astype(np.int64)
            feed["decoder_attention_mask"] = full
            feed["decoder_position_ids"] = np.maximum(full.cumsum(-1) - 1, 0)[:, -ids.shape[1] :]
        elif decoder_mask is not None and not decoder_mask.all():
            raise ValueError(
                f"{self.directory}: a left-padded decoder prompt needs graphs exported with a decoder mask (SmallCap "
                "exports have one); pass prompts of one length, or unpadded ones one at a time."
            )
        if past is None:
            for spec in self._past:
                shape = [ids.shape[0] if i == 0 else (d if isinstance(d, int) else 0) for i, d in enumerate(spec.shape)]
                feed[spec.name] = np.zeros(shape, dtype=np.float32)
        else:
            feed.update(past)
        feed[USE_CACHE_BRANCH] = np.array([past is not None])
        outputs = self.decoder.run(self._outputs, feed)
        present = {
            name.replace("present.", "past_key_values.", 1): value
            for name, value in zip(self._outputs[1:], outputs[1:])
        }
        if past is not None:  # the cross-attention keys/values do not change after the first step
            present.update({k: v for k, v in past.items() if ".encoder." in k})
        return outputs[0], present

    def generate(self, inputs: dict[str, np.ndarray], seed: int | None = None, **kwargs: Any) -> np.ndarray:
        r"""
        Generate ids `[B * num_return_sequences, T]` (decoder start token first), as `model.generate` does.

        Args:
            inputs: the encoder inputs (NumPy arrays; text: `input_ids` and `attention_mask`, padded).
            seed: the sampling seed (`do_sample=True`).
            kwargs: `generate`'s settings (`num_beams`, `max_new_tokens`, `do_sample`, `top_k`, ...).
        """
        cfg = generation.settings(self.generation_config, **kwargs)
        start = cfg["decoder_start_token_id"]
        if start is None:
            start = cfg["bos_token_id"]
        if start is None:
            raise ValueError(
                "decoder_start_token_id is not set in generation_config.json; pass decoder_start_token_id=... "
                "or set it on the model before exporting."
            )
        states = self.encode(inputs)
        mask = inputs.get("attention_mask") if self.encoder_mask else None
        batch = states.shape[0]
        ids = np.full((batch, 1), start, dtype=np.int64)
        prompt_mask = None
        if inputs.get("decoder_input_ids") is not None:  # a decoder prompt (left-padded, with its mask)
            ids = np.asarray(inputs["decoder_input_ids"], dtype=np.int64)
            given = inputs.get("decoder_attention_mask")
            prompt_mask = np.ones_like(ids) if given is None else np.asarray(given, dtype=np.int64)
        if cfg["max_new_tokens"] is not None:
            cfg["max_length"] = cfg["max_new_tokens"] + ids.shape[1]
        elif kwargs.get("max_length") is None and self.generation_config.get("max_length") is None:
            # transformers v5: with no length set anywhere, 20 new tokens (capped by the config's positions)
            cfg["max_length"] = generation.DEFAULTS["max_length"] + ids.shape[1]
            if isinstance(self.config.get("max_position_embeddings"), int):
                cfg["max_length"] = min(cfg["max_length"], self.config["max_position_embeddings"])
        expand = cfg["num_beams"] if cfg["num_beams"] > 1 else cfg["num_return_sequences"]
        if expand > 1:
            states = np.repeat(states, expand, axis=0)
            mask = None if mask is None else np.repeat(mask, expand, axis=0)
            prompt_mask = None if prompt_mask is None else np.repeat(prompt_mask, expand, axis=0)

        def step(fed: np.ndarray, past: Any, reorder: np.ndarray | None) -> tuple[np.ndarray, Any]:
            if past is not None and reorder is not None:
                past = {k: (v if ".encoder." in k else v[reorder]) for k, v in past.items()}
            full = None
            if prompt_mask is not None:  # the prompt's mask, then ones (beams of an input share one prompt)
                grown = fed.shape[1] + (0 if past is None else _past_length(past)) - prompt_mask.shape[1]
                full = np.concatenate([prompt_mask, np.ones((prompt_mask.shape[0], grown), np.int64)], axis=1)
            return self.decode(fed, states, mask, past, full)

        if cfg["num_beams"] > 1:
            return generation.beam_search(step, ids, cfg)
        rng = np.random.default_rng(seed)
        return generation.greedy_or_sample(step, np.repeat(ids, expand, axis=0), cfg, rng)

    # -- one-call inference ----------------------------------------------------------------------------------------

    def caption(
        self, images: Any, prompts: list[str] | None = None, retrieved_captions: list[Any] | None = None, **kwargs: Any
    ) -> list[str]:
        """Text for PIL images (preprocessed as `preprocessor_config.json` says), decoded without special tokens.
        `prompts`: one decoder prompt per image, left-padded in one batch and stripped from the text. A SmallCap
        export builds them as `SmallCapModel.caption` does: from `retrieved_captions` (per image, its captions or
        `None`), else the no-retrieval prompt."""
        feed = {"pixel_values": self.image_processor(images)}
        settings = self.manifest.get("decoder_prompt")
        if prompts is None and settings is not None:
            retrieved = retrieved_captions or [None] * len(feed["pixel_values"])
            prompts = [smallcap_prompt(captions, settings) for captions in retrieved]
        if prompts is None:
            return self.tokenizer.decode(self.generate(feed, **kwargs))
        feed.update(self.encode_prompts(prompts))
        return self.tokenizer.decode(self.generate(feed, **kwargs)[:, feed["decoder_input_ids"].shape[1] :])

    def encode_prompts(self, prompts: list[str]) -> dict[str, np.ndarray]:
        """Start token + each prompt's ids (no special tokens), left-padded: `decoder_input_ids` and
        `decoder_attention_mask` `[B, P]`, as `splice.inference.encode_prompts`."""
        start = self.config.get("decoder_start_token_id")
        pad = self.config.get("pad_token_id") or 0
        rows = [[start, *self.tokenizer.tokenizer.encode(p, add_special_tokens=False).ids] for p in prompts]
        width = max(len(row) for row in rows)
        ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = row
            mask[i, width - len(row) :] = 1
        return {"decoder_input_ids": ids, "decoder_attention_mask": mask}

    @property
    def image_processor(self) -> Any:
        """The image processor saved with the export (`splice_onnx.processing.ImageProcessor`), loaded on first use."""
        from .processing import ImageProcessor

        if self._image_processor is None:
            self._image_processor = ImageProcessor.from_dir(self.directory)
        return self._image_processor

    def transform(self, texts: str | list[str], **kwargs: Any) -> list[str]:
        """Text from source texts (text encoders), padded in one batch."""
        pad = self.config.get("pad_token_id") or self.generation_config.get("pad_token_id") or 0
        inputs = self.tokenizer.encode([texts] if isinstance(texts, str) else list(texts), pad)
        return self.tokenizer.decode(self.generate(inputs, **kwargs))

    @property
    def tokenizer(self) -> Any:
        """The `tokenizer.json` saved with the export (`tokenizers`)."""
        from .processing import TextTokenizer

        if self._tokenizer is None:
            self._tokenizer = TextTokenizer(self.directory)
        return self._tokenizer


def smallcap_prompt(captions: Any, settings: dict[str, Any]) -> str:
    """`splice.models.smallcap.build_prompt` from an export's prompt settings (`template`, `k`, `no_retrieval`)."""
    captions = list(captions or [])[: settings["k"]]
    if not captions:
        return settings["no_retrieval"]
    return settings["template"].format(captions="\n\n".join(c.strip().rstrip(".") for c in captions))


def _past_length(past: dict[str, np.ndarray]) -> int:
    """Tokens the self-attention cache holds."""
    for name, value in past.items():
        if ".encoder." not in name:
            return int(value.shape[2])
    return 0


OnnxCaptioner = OnnxSeq2Seq
