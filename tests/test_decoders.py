"""Compressed transfer syntaxes decode to the same pixels as their uncompressed twins
(pydicom / pydicom-data test files, read with download=False: no network)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from calcpipe.dicom import decode_stored, load_volume, read_hu


def _file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data)")
    return str(path)


def test_jpeg2000_ct_equals_uncompressed_in_hu():
    compressed, plain = read_hu(_file("693_J2KR.dcm")), read_hu(_file("693_UNCR.dcm"))
    assert compressed.shape == (1, 512, 512)
    np.testing.assert_array_equal(compressed, plain)
    assert int(plain.min()) < -1000 < 1000 < int(plain.max())


def test_enhanced_ct_multiframe_loads_as_volume():
    volume = load_volume(_file("eCT_Supplemental.dcm"))
    assert volume.shape == (2, 512, 512)
    assert volume.spacing_mm[0] == pytest.approx(10.0)
    # frames come in descending z in the file; the volume ascends
    assert volume.affine[2, 0] == pytest.approx(10.0)
    assert volume.affine[2, 3] == pytest.approx(-159.0)
    assert len(set(volume.sop_instance_uids)) == 2


@pytest.mark.parametrize(("compressed", "plain"), [
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("emri_small_RLE.dcm", "emri_small.dcm"),
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
])
def test_compressed_twins_decode_identically(compressed, plain):
    a, b = decode_stored(_file(compressed)), decode_stored(_file(plain))
    assert a.shape == b.shape and a.shape[0] >= 1
    np.testing.assert_array_equal(a, b)


def test_jpeg_lossless_process14_twin(tmp_path):
    """pydicom-data has no JPEG lossless file with an uncompressed twin; make one with
    GDCM's encoder and decode it through calcpipe's path."""
    gdcm = pytest.importorskip("gdcm")
    plain = _file("emri_small.dcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(plain)
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    out = tmp_path / "emri_jpeg_lossless.dcm"
    writer.SetFileName(str(out))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    import pydicom

    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(decode_stored(out), decode_stored(plain))


def test_jpeg_lossless_example_decodes():
    pixels = decode_stored(_file("JPEG-LL.dcm"))
    assert pixels.shape == (1, 1024, 256) and pixels.std() > 0
