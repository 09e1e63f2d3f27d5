"""The `splice` command line."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="splice", description="Splice any encoder onto any decoder.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a small captioner on generated shapes, offline, and caption samples")
    demo.add_argument("--output-dir", default="splice-demo")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--n-train", type=int, default=2000, help="generated training scenes")
    demo.add_argument("--n-eval", type=int, default=200, help="generated held-out scenes")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.output_dir, args.steps, args.batch_size, args.seed, n_train=args.n_train, n_eval=args.n_eval)


if __name__ == "__main__":
    main()
