"""The process :func:`weakseg.bench.runner.bench` runs each row in: ``python -m weakseg.bench REQUEST``."""

import sys

from weakseg.bench.runner import main

main(sys.argv[1:])
