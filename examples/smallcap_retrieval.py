"""SmallCap's claims on generated data, with a miniature CLIP and GPT-2 pretrained first (the same run as
`splice demo --task smallcap`; the code is `splice/training/smallcap_demo.py`).

1. A tiny CLIP (`transformers.CLIPModel`, its contrastive loss) is pretrained on image–caption pairs of two domains of
   generated scenes (`splice.data.scenes`), a tiny GPT-2 (`GPT2LMHeadModel`) on their caption text.
2. SmallCap freezes both and trains only its reduced cross-attention (r = 4) on domain `a`, prompted with the 4
   captions whose CLIP text embeddings are nearest the image's CLIP embedding.
3. On held-out images (learning rates chosen on a validation split, 3 seeds, 95% bootstrap intervals over images):
   retrieval vs none, r = 1 without retrieval, the domain-`a` model on domain `b` with `a`'s vs `b`'s datastore, and
   how often the retrieved captions describe the image.

Run: `python examples/smallcap_retrieval.py [--quick] [--output DIR]`; prints the table and writes
`DIR/smallcap_results.json`, the models and both datastores.
"""

from __future__ import annotations

import argparse

from splice.training.smallcap_demo import QUICK_DEMO, SMALLCAP_DEMO, run_smallcap_demo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast variant (a smoke test, not the result)")
    parser.add_argument("--output", default="splice-demo-smallcap")
    args = parser.parse_args()
    run_smallcap_demo(args.output, QUICK_DEMO if args.quick else SMALLCAP_DEMO)
