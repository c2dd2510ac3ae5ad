"""scripts/download_weights.sh: checksums are verified, a bad file is never kept, offline fails clearly."""
from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "download_weights.sh"


def download(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_every_model_has_an_official_url_and_a_sha256_or_says_unknown():
    rows = [l.split("|") for l in SCRIPT.read_text().splitlines() if re.match(r"^[a-z0-9_-]+\|", l)]
    names = {r[0] for r in rows}
    assert names == {"yolov8s-worldv2", "yolov8m-worldv2", "yolov8l-worldv2", "sam_vit_b", "sam_vit_l", "sam_vit_h",
                     "clip_vit_b32"}
    for name, file, url, sha in rows:
        assert url.startswith(("https://github.com/ultralytics/assets/releases/download/",
                               "https://dl.fbaipublicfiles.com/segment_anything/",
                               "https://openaipublic.azureedge.net/clip/models/")) and url.endswith(Path(file).name)
        assert re.fullmatch(r"[0-9a-f]{64}", sha) or sha == "unknown", name
    # OpenAI puts the file's SHA-256 in the URL; the table must agree with it
    clip = next(r for r in rows if r[0] == "clip_vit_b32")
    assert clip[2].split("/")[-2] == clip[3]
    readme = (REPO / "weights" / "README.md").read_text()
    for name, file, url, sha in rows:
        assert url in readme and (sha in readme if sha != "unknown" else True), name


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
