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
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.output_dir, steps=args.steps, batch_size=args.batch_size, seed=args.seed)


if __name__ == "__main__":
    main()
