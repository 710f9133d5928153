"""`python -m mafs_ros.train CONFIG.yaml` (what `torchrun --nproc_per_node N -m mafs_ros.train ...` runs)."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
