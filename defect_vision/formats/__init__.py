"""The output formats of `convert`. Their names live here, importing nothing, so `convert --help` stays cheap."""

FORMATS = ("coco", "yolo", "voc", "sam")
