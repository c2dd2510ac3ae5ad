"""`python converters/mvtec_to_yolo.py --category C`: the yolo export of a category (see --help)."""
import sys

from defect_vision.cli.convert import main

if __name__ == "__main__":
    sys.exit(main(prog="mvtec_to_yolo.py", fmt="yolo"))
