"""`python -m splice.cli ...` (also under `torchrun` and `accelerate launch`)."""

from . import main

main()
