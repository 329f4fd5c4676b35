"""``python -m samkit.train ...`` and ``torchrun --nproc_per_node=N -m samkit.train ...``: same as ``samkit train``."""

import sys

from samkit.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(["train", *sys.argv[1:]]))
