"""Derived keys, pseudonyms and the pure geometry helpers, on hand-made inputs."""

from __future__ import annotations

import hashlib
import hmac
import re

import numpy as np
import pytest

from calcpipe.dicom import geometry
from calcpipe.keys import derived_uid, pseudonymise


def test_derived_uid_is_deterministic_valid_and_kind_specific():
    key = derived_uid("study", ["PAT1", "20240101"])
    assert key == derived_uid("study", ["PAT1", "20240101"])
    assert re.fullmatch(r"2\.25\.[1-9][0-9]*", key) and len(key) <= 64
    assert key != derived_uid("series", ["PAT1", "20240101"])
    assert key != derived_uid("study", ["PAT120240101"])  # parts are length-delimited


def test_pseudonymise_is_hmac_sha256():
    expected = hmac.new(b"secret", b"1.2.3", hashlib.sha256).hexdigest()
    assert pseudonymise("1.2.3", b"secret") == expected
    with pytest.raises(ValueError, match="empty"):
        pseudonymise("1.2.3", b"")


def test_sort_key_ascends_in_patient_z_for_either_normal():
    positions = np.array([[0, 0, 9.0], [0, 0, 3.0], [0, 0, 6.0]])
    up = geometry.slice_normal([1, 0, 0, 0, 1, 0])
    down = geometry.slice_normal([1, 0, 0, 0, -1, 0])
    assert list(np.argsort(geometry.sort_key(positions, up))) == [1, 2, 0]
    assert list(np.argsort(geometry.sort_key(positions, down))) == [1, 2, 0]


def test_sort_key_ascends_along_the_normal_of_a_non_axial_stack():
    positions = np.array([[-4.0, 0, 0], [0.0, 0, 0], [-2.0, 0, 0]])
    for noise in (0.0, 1e-6, -1e-6):  # sagittal, normal (-1, 0, -noise)
        normal = geometry.slice_normal([0, 1, 0, noise, 0, -1])
        assert list(np.argsort(geometry.sort_key(positions, normal))) == [1, 2, 0]
    # an axial stack tilted well past the noise still ascends in patient z
    tilted = geometry.slice_normal([1, 0, 0, 0, -0.9, 0.3])
    keys = geometry.sort_key(np.array([[0, 0, 3.0], [0, 0, 0.0]]) , tilted)
    assert keys[0] > keys[1]


def test_stack_problems_on_hand_made_positions():
    normal = np.array([0.0, 0.0, 1.0])
    z = np.array([0.0, 3.0, 6.0, 9.0])
    pos = np.c_[np.zeros(4), np.zeros(4), z]
    assert geometry.stack_problems(z, pos, normal, 0.0) == []
    gap = np.array([0.0, 3.0, 9.0, 12.0])
    codes = [p.code for p in geometry.stack_problems(gap, np.c_[pos[:, :2], gap], normal, None)]
    assert codes == ["missing_slice"]
    uneven = np.array([0.0, 3.0, 6.5, 9.5])
    codes = [p.code for p in geometry.stack_problems(uneven, np.c_[pos[:, :2], uneven],
                                                     normal, None)]
    assert codes == ["nonuniform_spacing"]
    sheared = np.c_[np.arange(4.0), np.zeros(4), z]
    assert [p.code for p in geometry.stack_problems(z, sheared, normal, None)] == ["gantry_tilt"]
    # jitter well inside the tolerance is not a problem
    jitter = z + np.array([0.0, 0.004, -0.003, 0.002])
    assert geometry.stack_problems(jitter, np.c_[pos[:, :2], jitter], normal, None) == []


def test_affine_columns():
    iop = np.array([1.0, 0, 0, 0, 1, 0])
    affine = geometry.affine_from(np.array([1.0, 2, 3]), np.array([1.0, 2, 12]), 4, iop,
                                  (0.5, 0.7))
    np.testing.assert_allclose(affine @ [1, 2, 3, 1], [1 + 3 * 0.7, 2 + 2 * 0.5, 6, 1])
