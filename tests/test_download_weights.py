"""scripts/download_weights.sh: checksums are verified, a bad file is never kept, offline fails clearly."""
from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "download_weights.sh"


def download(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


ULTRALYTICS = "https://github.com/ultralytics/assets/releases/download/v8.4.0/"  # the release ultralytics 8.4 uses
MOBILE_SAM = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/"
SAM2_1 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
SAM2_0 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
EXPECTED = {  # name -> official URL prefix
    "yolov8s-worldv2": ULTRALYTICS, "yolov8m-worldv2": ULTRALYTICS, "yolov8l-worldv2": ULTRALYTICS,
    "sam_vit_b": "https://dl.fbaipublicfiles.com/segment_anything/", "sam_vit_l": "https://dl.fbaipublicfiles.com/segment_anything/",
    "sam_vit_h": "https://dl.fbaipublicfiles.com/segment_anything/", "clip_vit_b32": "https://openaipublic.azureedge.net/clip/models/",
    "mobile_sam": MOBILE_SAM,
    **{f"sam2.1_hiera_{k}": SAM2_1 for k in ("tiny", "small", "base_plus", "large")},
    **{f"sam2_hiera_{k}": SAM2_0 for k in ("tiny", "small", "base_plus", "large")},
    **{f"sam2.1_{k}": ULTRALYTICS for k in "tsbl"}, **{f"sam2_{k}": ULTRALYTICS for k in "tsbl"},
    **{f"yoloe-11{k}-seg": ULTRALYTICS for k in "sml"}, **{f"yoloe-v8{k}-seg": ULTRALYTICS for k in "sml"},
    **{f"yoloe-26{k}-seg": ULTRALYTICS for k in "nsmlx"},
    "mobileclip_blt": ULTRALYTICS, "mobileclip2_b": ULTRALYTICS,
}
# no published SHA-256 was found for these (weights/README.md says so); every other row must carry one
UNKNOWN = {"yolov8m-worldv2", "yolov8l-worldv2", "yoloe-v8s-seg", "yoloe-v8m-seg", "yoloe-v8l-seg"}


def table() -> list[list[str]]:
    return [l.split("|") for l in SCRIPT.read_text().splitlines() if re.match(r"^[a-z0-9_.-]+\|", l)]


def test_every_model_has_an_official_url_and_a_sha256_or_says_unknown():
    rows = table()
    assert all(len(r) == 4 for r in rows), rows
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)) and set(names) == set(EXPECTED)  # unique names, every family listed
    assert len({r[1] for r in rows}) == len(rows)  # unique files under weights/
    for name, file, url, sha in rows:
        assert url.startswith(EXPECTED[name]) and url.endswith("/" + Path(file).name), name
        assert re.fullmatch(r"[0-9a-f]{64}", sha) or sha == "unknown", name
        assert (sha == "unknown") == (name in UNKNOWN), name
    known = [r[3] for r in rows if r[3] != "unknown"]
    assert len(known) == len(set(known))  # distinct files, distinct hashes: no value pasted into the wrong row
    # OpenAI puts the file's SHA-256 in the URL; the table must agree with it
    clip = next(r for r in rows if r[0] == "clip_vit_b32")
    assert clip[2].split("/")[-2] == clip[3]
    readme = (REPO / "weights" / "README.md").read_text()
    for name, file, url, sha in rows:
        assert f"| `{name}` | `{file}` | {url} |" in readme, name
        assert (sha in readme if sha != "unknown" else f"`{name}`" in readme.split("**No published SHA-256**")[1]), name


def test_every_hash_names_its_source_in_the_script():
    head = SCRIPT.read_text().split("MODELS='")[0]
    for source in ("micro-sam", "micro_sam/util.py", "micro_sam/v2/util.py", "ChaoningZhang/MobileSAM",
                   "OscarKing888/SuperBirdTools", "BayJoi/spectra-segment", "peter119lee/ComfyUI-YOLOE26",
                   "ultralytics/nn/text_model.py"):
        assert source in head, source


def test_ultralytics_rows_are_names_ultralytics_downloads():
    downloads = pytest.importorskip("ultralytics.utils.downloads")
    for name, file, url, _ in table():
        if url.startswith(ULTRALYTICS):
            assert file in downloads.GITHUB_ASSETS_NAMES, file
    text_model = (Path(downloads.__file__).parents[1] / "nn" / "text_model.py").read_text()
    assert "mobileclip_blt.ts" in text_model and "mobileclip2_b.ts" in text_model  # YOLOE's text encoders


def test_mismatching_file_is_deleted_and_reported(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "sam_vit_b_01ec64.pth").write_bytes(b"not the real checkpoint")
    r = download("--dest", str(tmp_path / "w"), "--mirror", str(mirror), "sam_vit_b")
    assert r.returncode == 1
    got = hashlib.sha256(b"not the real checkpoint").hexdigest()
    assert f"SHA-256 mismatch (got {got}, expected ec2df627" in r.stderr
    assert not list((tmp_path / "w").glob("*"))  # neither the file nor a .part left behind


def test_unknown_hash_is_printed_as_unverified(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "yolov8m-worldv2.pt").write_bytes(b"m")
    r = download("--dest", str(tmp_path / "w"), "--mirror", str(mirror), "yolov8m-worldv2")
    assert r.returncode == 0
    assert f"UNVERIFIED {tmp_path}/w/yolov8m-worldv2.pt: no published SHA-256 known" in r.stdout
    assert hashlib.sha256(b"m").hexdigest() in r.stdout
    assert r.stdout.strip().endswith(f"weights: 0 verified, 1 unverified, 0 failed (in {tmp_path}/w)")


def test_offline_fails_with_a_clear_message(tmp_path):
    r = download("--dest", str(tmp_path / "w"), "--mirror", "http://127.0.0.1:9", "sam_vit_b")
    assert r.returncode == 1
    assert ("error: http://127.0.0.1:9/sam_vit_b_01ec64.pth: download failed (no network? behind a proxy?"
            in r.stderr)
    assert not (tmp_path / "w" / "sam_vit_b_01ec64.pth").exists()


def test_check_reports_missing_files(tmp_path):
    r = download("--dest", str(tmp_path), "--check")
    assert r.returncode == 1
    assert f"error: {tmp_path}/yolov8s-worldv2.pt: missing" in r.stderr
    assert "weights: 0 verified, 0 unverified, 3 failed" in r.stdout


def test_missing_file_in_a_mirror_folder_is_named(tmp_path):
    (tmp_path / "mirror").mkdir()
    r = download("--dest", str(tmp_path / "w"), "--mirror", str(tmp_path / "mirror"), "sam_vit_b")
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: {tmp_path}/mirror/sam_vit_b_01ec64.pth: missing or unreadable in the --mirror folder"
    assert not (tmp_path / "w" / "sam_vit_b_01ec64.pth").exists() and not list((tmp_path / "w").glob("*.part"))


def test_check_verifies_present_files_of_the_new_families(tmp_path):
    (tmp_path / "mobile_sam.pt").write_bytes(b"not mobilesam")
    (tmp_path / "yoloe-v8s-seg.pt").write_bytes(b"v8s")
    r = download("--dest", str(tmp_path), "--check", "mobile_sam", "yoloe-v8s-seg", "sam2.1_hiera_tiny")
    assert r.returncode == 1
    got = hashlib.sha256(b"not mobilesam").hexdigest()
    assert (f"error: {tmp_path}/mobile_sam.pt: SHA-256 mismatch (got {got}, expected "
            "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f)") in r.stderr
    assert f"error: {tmp_path}/sam2.1_hiera_tiny.pt: missing" in r.stderr
    assert f"UNVERIFIED {tmp_path}/yoloe-v8s-seg.pt: no published SHA-256 known" in r.stdout
    assert hashlib.sha256(b"v8s").hexdigest() in r.stdout
    assert r.stdout.strip().endswith(f"weights: 0 verified, 1 unverified, 2 failed (in {tmp_path})")
    assert (tmp_path / "mobile_sam.pt").exists()  # --check reports, it never deletes or downloads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mobile_sam.pt", "yoloe-v8s-seg.pt"]


def test_check_accepts_a_matching_file_and_names_are_exact(tmp_path):
    # a copy of the script whose sam2.1_t row expects the test file's hash: the "ok" path for a name with a dot
    body = b"stand-in for sam2.1_t.pt"
    script = tmp_path / "download_weights.sh"
    text = SCRIPT.read_text()
    row = next("|".join(r) for r in table() if r[0] == "sam2.1_t")
    script.write_text(text.replace(row, row.rsplit("|", 1)[0] + "|" + hashlib.sha256(body).hexdigest()))
    dest = tmp_path / "w"
    dest.mkdir()
    (dest / "sam2.1_t.pt").write_bytes(body)
    r = subprocess.run(["bash", str(script), "--dest", str(dest), "--check", "sam2.1_t"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"ok         {dest}/sam2.1_t.pt (sha256 verified)" in r.stdout
    assert r.stdout.strip().endswith(f"weights: 1 verified, 0 unverified, 0 failed (in {dest})")
    for partial in ("sam2.1", "sam2x1_t", "sam2.1_t.pt", "yoloe-11s"):  # no prefix or regex matches
        r = download("--dest", str(dest), "--check", partial)
        assert r.returncode == 2 and f"error: {partial}: unknown model" in r.stderr, partial


def test_check_all_lists_every_missing_file(tmp_path):
    r = download("--dest", str(tmp_path), "--check", "--all")
    assert r.returncode == 1
    rows = table()
    assert all(f"error: {tmp_path}/{file}: missing" in r.stderr for _, file, _, _ in rows)
    assert f"weights: 0 verified, 0 unverified, {len(rows)} failed" in r.stdout


def test_mirror_mismatch_of_a_new_file_is_deleted(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "yoloe-26s-seg.pt").write_bytes(b"tampered")
    (mirror / "mobileclip_blt.ts").write_bytes(b"tampered too")
    r = download("--dest", str(tmp_path / "w"), "--mirror", str(mirror), "yoloe-26s-seg", "mobileclip_blt")
    assert r.returncode == 1
    assert "expected 48f24206bc8680d60cbbfa296b0140da849669b9515058b72f5a945142df0654); the file was deleted" in r.stderr
    assert "expected a67804d1b0f07b8b9a20c1761ec0847f34660f5fa338ec70e8f3fce68ed95e54); the file was deleted" in r.stderr
    assert not list((tmp_path / "w").glob("*"))
