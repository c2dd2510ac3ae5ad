"""`python -m defect_vision <command> ...`: the same commands as `defect-vision`."""
import sys

from defect_vision.cli import main

sys.exit(main())
