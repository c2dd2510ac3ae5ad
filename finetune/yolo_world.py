"""`python finetune/yolo_world.py --category C ...`: the same as `defect-vision train-detector` (see --help)."""
import sys

from defect_vision.cli.train_detector import main

if __name__ == "__main__":
    sys.exit(main(prog="finetune/yolo_world.py"))
