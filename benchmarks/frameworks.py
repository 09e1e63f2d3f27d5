"""The JAX and TensorFlow classes against PyTorch: the full parity table and a generate timing.

    python benchmarks/frameworks.py [--skip-tf] [--skip-timing] [--json out.json]

Parity: every family pair (encoders ViT, DeiT, BERT, RoBERTa × decoders GPT-2, BERT, RoBERTa, tiny random weights,
as in tests/frameworks.py) × framework (JAX, TF): the largest logit difference to splice's PyTorch class and to
transformers' PyTorch class on the same checkpoint, and whether greedy and beam-3 ids are identical.

Timing: a ViT-GPT-2 captioner of a useful size (ViT 224/16, 6 layers, width 384; GPT-2 6 layers, width 384, vocab
8,000) with the same weights in PyTorch (splice) and JAX; `generate` of 32 new tokens (no early stop: eos off), greedy
and beam 3, batch 1 and 8, median of 5 after a warm-up (JAX's compile time reported apart). Same ids are asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from frameworks import PAIRS, build_pair, numpy_inputs, torch_generate, torch_logits, transformers_logits  # noqa: E402

import splice  # noqa: E402


def parity(skip_tf: bool) -> list[dict]:
    from splice.flax import FlaxEncoderDecoderModel, FlaxVisionEncoderDecoderModel

    rows = []
    for name in PAIRS:
        with tempfile.TemporaryDirectory() as tmp:
            pair = build_pair(name, tmp)
            ref, oracle = torch_logits(pair), transformers_logits(pair)
            greedy, beam = torch_generate(pair), torch_generate(pair, num_beams=3)
            gen = {"max_new_tokens": 8, "eos_token_id": pair.eos_token_id}
            jax_class = FlaxVisionEncoderDecoderModel if pair.vision else FlaxEncoderDecoderModel
            model = jax_class.from_pretrained(pair.directory)
            inputs = numpy_inputs(pair)
            logits = np.asarray(model(**inputs, decoder_input_ids=pair.decoder_input_ids.numpy()).logits)
            rows.append({
                "pair": name, "framework": "jax", "vs_splice": float(np.abs(logits - ref).max()),
                "vs_transformers": float(np.abs(logits - oracle).max()),
                "greedy": np.array_equal(np.asarray(model.generate(**inputs, **gen).sequences), greedy),
                "beam3": np.array_equal(np.asarray(model.generate(**inputs, num_beams=3, **gen).sequences), beam),
            })  # fmt: skip
            if not skip_tf:
                from splice.tf import TFEncoderDecoderModel, TFVisionEncoderDecoderModel

                tf_model = (TFVisionEncoderDecoderModel if pair.vision else TFEncoderDecoderModel)(flax_model=model)
                logits = tf_model(**inputs, decoder_input_ids=pair.decoder_input_ids.numpy()).logits.numpy()
                rows.append({
                    "pair": name, "framework": "tf", "vs_splice": float(np.abs(logits - ref).max()),
                    "vs_transformers": float(np.abs(logits - oracle).max()),
                    "greedy": np.array_equal(tf_model.generate(**inputs, **gen).numpy(), greedy),
                    "beam3": np.array_equal(tf_model.generate(**inputs, num_beams=3, **gen).numpy(), beam),
                })  # fmt: skip
            for r in (r for r in rows[-2:] if r["pair"] == name):
                print(f"{name:16} {r['framework']:4} {r['vs_splice']:.1e} {r['vs_transformers']:.1e} "
                      f"greedy={r['greedy']} beam3={r['beam3']}")  # fmt: skip
    return rows


def _median(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timing() -> list[dict]:
    from splice.flax import FlaxVisionEncoderDecoderModel

    torch.manual_seed(0)
    encoder = transformers.ViTConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                                     intermediate_size=1536)  # fmt: skip
    decoder = transformers.GPT2Config(vocab_size=8000, n_embd=384, n_layer=6, n_head=6, bos_token_id=0,
                                      eos_token_id=0, pad_token_id=0)  # fmt: skip
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    model = splice.VisionEncoderDecoderModel(config).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        jax_model = FlaxVisionEncoderDecoderModel.from_pretrained(tmp)
    for batch in (1, 8):
        pixels = torch.randn(batch, 3, 224, 224)
        for beams in (1, 3):
            # An eos id random weights practically never pick: every row runs the full 32 steps.
            kwargs = {"max_new_tokens": 32, "num_beams": beams, "eos_token_id": 7999}
            with torch.no_grad():
                ids = model.generate(pixels, **kwargs)
            start = time.perf_counter()
            out = jax_model.generate(pixels.numpy(), **kwargs).sequences
            compile_s = time.perf_counter() - start
            assert np.array_equal(np.asarray(out), ids.numpy()), "JAX and PyTorch ids differ"
            with torch.no_grad():
                torch_s = _median(lambda p=pixels, k=kwargs: model.generate(p, **k))
            array = pixels.numpy()
            jax_s = _median(lambda p=array, k=kwargs: np.asarray(jax_model.generate(p, **k).sequences))
            rows.append({"batch": batch, "num_beams": beams, "torch_s": torch_s, "jax_s": jax_s,
                         "jax_first_call_s": compile_s, "speedup": torch_s / jax_s})  # fmt: skip
            print(
                f"batch {batch} beams {beams}: torch {torch_s:.3f}s jax {jax_s:.3f}s (first call {compile_s:.1f}s) "
                f"-> jax {torch_s / jax_s:.2f}x"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tf", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    result = {"threads": torch.get_num_threads()}
    if not args.skip_parity:
        result["parity"] = parity(args.skip_tf)
        assert all(r["vs_splice"] <= 1e-5 and r["vs_transformers"] <= 1e-5 and r["greedy"] and r["beam3"]
                   for r in result["parity"]), "a parity row failed"  # fmt: skip
    if not args.skip_timing:
        result["timing"] = timing()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
