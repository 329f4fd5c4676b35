"""``python -m samkit ...`` and ``torchrun --nproc_per_node=N -m samkit train ...``: the samkit command line."""

import sys

from samkit.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
