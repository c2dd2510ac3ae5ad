"""`python finetune/sam.py ...` is `defect-vision train-sam ...` (see --help)."""
import sys

from defect_vision.cli.train_sam import main

if __name__ == "__main__":
    sys.exit(main(prog="finetune/sam.py"))
