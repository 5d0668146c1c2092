"""Discovery on a local S3 server (moto) gives what the same files on disk give, and a
header scan fetches at most HEADER_BYTES per file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from calcpipe.dicom import load_volume
from calcpipe.dicom.writer import write_series
from calcpipe.ingest import HEADER_BYTES, discover, load_study, scan_headers

pytest.importorskip("moto.server", reason="moto[server] (the dev extra) is not installed")
s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed")

STUDY = "1.2.826.0.1.3680043.8.498.9"
_INTERNAL = {"url", "etag", "mtime"}


@pytest.fixture(scope="session")
def study_on_disk_and_s3(tmp_path_factory, local_s3):
    root = tmp_path_factory.mktemp("s3study")
    rng = np.random.default_rng(3)
    for n, kernel in ((1, "B70f"), (2, "B35f")):
        hu = rng.integers(-1000, 1500, size=(4, 16, 16)).astype(np.int16)
        write_series(root / f"series{n}", hu, spacing_mm=(3, 0.5, 0.5), study_uid=STUDY,
                     series_uid=f"{STUDY}.{n}",
                     extra={"ConvolutionKernel": kernel, "Manufacturer": "SIEMENS"})
    (root / "_truth").mkdir()
    (root / "_truth" / "x.dcm").write_bytes((root / "series1" / "IM0000.dcm").read_bytes())
    (root / "README.txt").write_text("not DICOM")
    return root, local_s3.upload(root, "s3://cohort/study")


def _comparable(found):
    return [(c.study.study_key, c.decision,
             [(g.summary, [{k: v for k, v in dataclasses.asdict(h).items() if k not in _INTERNAL}
                           for h in g.instances]) for g in c.study.series])
            for c in found.studies]


def test_s3_gives_the_same_studies_series_and_decisions(study_on_disk_and_s3, local_s3):
    disk, url = study_on_disk_and_s3
    on_disk = discover(disk)
    on_s3 = discover(url, storage_options=local_s3.storage_options)
    assert _comparable(on_s3) == _comparable(on_disk)
    assert on_s3.studies[0].decision.chosen == f"{STUDY}.2"
    headers = [h for c in on_s3.studies for g in c.study.series for h in g.instances]
    assert len(headers) == 8 and all(h.etag and h.url.startswith("s3://cohort/") for h in headers)
    assert [s.code for s in on_s3.skipped] == ["not_dicom"]


def test_s3_loads_the_same_volume(study_on_disk_and_s3, local_s3):
    disk, url = study_on_disk_and_s3
    from_s3 = load_study(url, storage_options=local_s3.storage_options)
    local = load_volume(disk)
    assert from_s3.series_uid == local.series_uid == f"{STUDY}.2"
    np.testing.assert_array_equal(from_s3.hu, local.hu)
    np.testing.assert_array_equal(from_s3.affine, local.affine)
    assert from_s3.selection == local.selection
    assert all(f.startswith("s3://cohort/study/series2/") for f in from_s3.source_files)


def test_a_header_scan_fetches_at_most_64_kib_per_file(tmp_path, local_s3, monkeypatch):
    # files of 512 x 512 pixels (about 520 KB each): the scan must not read the pixels
    hu = np.zeros((3, 512, 512), dtype=np.int16)
    write_series(tmp_path / "big", hu, spacing_mm=(3, 0.5, 0.5))
    url = local_s3.upload(tmp_path / "big", "s3://cohort/big")
    fetched: list[tuple[str, int]] = []
    original = s3fs.S3FileSystem._cat_file

    async def counting(self, path, *args, **kwargs):
        data = await original(self, path, *args, **kwargs)
        fetched.append((path, len(data)))
        return data

    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", counting)
    scan = scan_headers(url, storage_options=local_s3.storage_options)
    assert len(scan.headers) == 3 and all(h.size_bytes > 500_000 for h in scan.headers)
    assert len(fetched) == 3
    assert all(n <= HEADER_BYTES for _, n in fetched), fetched


def test_real_totalseg_on_s3(shared_data, local_s3):
    url = local_s3.upload(shared_data / "totalseg_ct_jpeg2000", "s3://cohort/totalseg")
    on_s3 = discover(url, storage_options=local_s3.storage_options)
    on_disk = discover(Path(shared_data / "totalseg_ct_jpeg2000"))
    assert _comparable(on_s3) == _comparable(on_disk)
    assert on_s3.studies[0].study.study_key.startswith("2.25.")
