"""transformers vs PyTorch splice vs onnxruntime fp32 / int8 (splice_onnx) on the same weights: greedy batch 1 and 8,
beam-4 batch 8, export time and file sizes. CPU, a small ViT + GPT-2 (random weights) saved by transformers'
`VisionEncoderDecoderModel`. Run `python benchmarks/onnx_runtime.py [--threads N]` (not named `onnx.py`: a script
of that name would shadow the `onnx` package). transformers, splice and fp32 onnxruntime must generate the same ids
(asserted); int8's token agreement with fp32 is reported."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from tiny import randomize  # noqa: E402

from splice.export import export_onnx, load_model  # noqa: E402
from splice_onnx import OnnxSeq2Seq  # noqa: E402

CASES = (("greedy, batch 1", 1, 1), ("greedy, batch 8", 8, 1), ("beam-4, batch 8", 8, 4))


def _time(fn, repeat: int = 3) -> tuple[float, object]:
    fn()
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder = transformers.ViTConfig(image_size=64, patch_size=8, hidden_size=256, num_hidden_layers=4,
                                     num_attention_heads=4, intermediate_size=1024)  # fmt: skip
    decoder = transformers.GPT2Config(vocab_size=8000, n_embd=256, n_layer=4, n_head=4, n_positions=128,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    hf = randomize(transformers.VisionEncoderDecoderModel(config), std=0.05).eval()
    for cfg in (hf.config, hf.generation_config):
        cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 1, 0, 2
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(f"{tmp}/model")
        start = time.perf_counter()
        export_onnx(f"{tmp}/model", f"{tmp}/onnx", quantize="int8", progress=None)
        print(f"export (fp32 + int8 + the check against PyTorch): {time.perf_counter() - start:.1f} s")
        for name in sorted(os.listdir(f"{tmp}/onnx/onnx")):  # the graphs sit in OUT_DIR/onnx/
            print(f"  {name}: {os.path.getsize(f'{tmp}/onnx/onnx/{name}') / 1e6:.1f} MB")
        model = load_model(f"{tmp}/model")
        fp32 = OnnxSeq2Seq.from_pretrained(f"{tmp}/onnx", threads=args.threads)
        int8 = OnnxSeq2Seq.from_pretrained(f"{tmp}/onnx", quantized=True, threads=args.threads)
        print(f"{args.threads} thread(s), best of 3, 20 new tokens; load average {os.getloadavg()[0]:.1f}")
        print("| case | transformers (s) | PyTorch splice (s) | onnxruntime fp32 (s) | onnxruntime int8 (s) | "
              "ids equal (transformers = splice = fp32) | int8 token agreement |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for label, batch, beams in CASES:
            pixels = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
            kwargs = {"num_beams": beams, "max_new_tokens": 20, "eos_token_id": 2}
            with torch.no_grad():
                t_hf, ids_hf = _time(lambda p=pixels, k=kwargs: hf.generate(p, **k).numpy())
                t_pt, ids_pt = _time(lambda p=pixels, k=kwargs: model.generate(p, **k).numpy())
            feed = {"pixel_values": pixels.numpy()}
            t_fp, ids_fp = _time(lambda f=feed, k=kwargs: fp32.generate(f, **k))
            t_q, ids_q = _time(lambda f=feed, k=kwargs: int8.generate(f, **k))
            np.testing.assert_array_equal(ids_pt, ids_hf, err_msg=f"{label}: splice vs transformers")
            np.testing.assert_array_equal(ids_fp, ids_pt, err_msg=f"{label}: onnxruntime fp32 vs splice")
            width = min(ids_q.shape[1], ids_fp.shape[1])
            agree = float((ids_q[:, :width] == ids_fp[:, :width]).mean())
            print(f"| {label} | {t_hf:.3f} | {t_pt:.3f} | {t_fp:.3f} | {t_q:.3f} | yes | {agree:.3f} |")


if __name__ == "__main__":
    main()
