"""``python -m converters convert {vit,scgpt,brainlm} SRC OUT [--verify GOLDEN.npz]``."""

import sys

from converters.cli import main

if __name__ == "__main__":
    sys.exit(main())
