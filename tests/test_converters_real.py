"""The exporters on the real MVTec AD sample in ../shared (bottle, grid with grayscale images and train/good,
metal_nut); skipped when it is absent."""
from __future__ import annotations

import pytest
import test_converters as checks
from conftest import REAL_CATEGORIES

pytestmark = pytest.mark.real_data


@pytest.mark.parametrize("category", REAL_CATEGORIES)
def test_real_category_exports_agree_and_reproduce_the_masks(real_root, category, tmp_path):
    line = checks.export_all(real_root, category, tmp_path, "--negative-points", "2")
    m = checks.SUMMARY.match(line)
    assert m and m["cat"] == category and int(m["inst"]) > 0
    checks.check_export(real_root, category, tmp_path)


def test_grayscale_grid_images_keep_their_size_and_train_good_are_negatives(real_root, tmp_path):
    from PIL import Image

    checks.export_all(real_root, "grid", tmp_path)
    cocos = checks.load_coco(tmp_path, "grid")
    images = [img for c in cocos.values() for img in c.dataset["images"]]
    for img in images:
        with Image.open(real_root / "grid" / img["file_name"]) as im:
            assert im.mode == "L" and (img["width"], img["height"]) == im.size
    assert any(img["file_name"].startswith("train/good/") and not cocos_anns(cocos, img) for img in images)


def cocos_anns(cocos, img) -> list:
    return [a for c in cocos.values() for a in c.dataset["annotations"] if a["image_id"] == img["id"]]
