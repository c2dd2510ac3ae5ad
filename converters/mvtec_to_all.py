"""`python converters/mvtec_to_all.py --category C`: COCO, YOLO, VOC and SAM prompts at once (= `defect-vision convert`)."""
import sys

from defect_vision.cli.convert import main

if __name__ == "__main__":
    sys.exit(main(prog="mvtec_to_all.py"))
