"""DICOM errors: input (the files), geometry (the stack) and decoding (the pixels)."""

from __future__ import annotations

from dataclasses import dataclass

from calcpipe.errors import CalcpipeError


class DicomError(CalcpipeError):
    """Any refusal to turn DICOM files into a volume."""


class DicomInputError(DicomError):
    """The files are not a single CT series that can be read.

    Codes: ``empty_file``, ``not_dicom``, ``unreadable``, ``truncated``, ``not_ct``,
    ``no_pixel_data``, ``missing_attribute``, ``mixed_series``, ``no_files``,
    ``series_not_found``, ``several_studies``, ``no_eligible_series``,
    ``invalid_attribute``.
    """


class DicomDecodeError(DicomError):
    """The pixel data cannot be decoded into Hounsfield units.

    Codes: ``unsupported_transfer_syntax``, ``decode_failed``, ``truncated``,
    ``hu_out_of_range``, ``unsupported_pixel_format``.
    """


@dataclass(frozen=True)
class GeometryProblem:
    """One reason a stack of slices is not a regular volume."""

    code: str
    detail: str


class DicomGeometryError(DicomError):
    """The slices do not form a regular, untilted, gap-free volume.

    All problems found are reported at once (``problems``); ``code`` is the first one's.
    Codes: ``single_slice``, ``duplicate_position``, ``missing_slice``,
    ``nonuniform_spacing``, ``gantry_tilt``, ``mismatched_matrix``,
    ``mismatched_pixel_spacing``, ``mismatched_orientation``.
    """

    def __init__(
        self,
        problems: list[GeometryProblem],
        *,
        path: str | None = None,
        series_uid: str | None = None,
    ) -> None:
        if not problems:
            raise ValueError("DicomGeometryError needs at least one problem")
        self.problems = tuple(problems)
        message = "the slices do not form a regular volume: " + "; ".join(
            f"{p.code}: {p.detail}" for p in problems
        )
        super().__init__(
            message,
            code=problems[0].code,
            path=path,
            series_uid=series_uid,
            attribute="ImagePositionPatient/ImageOrientationPatient",
            fix="re-export or re-reconstruct the series as contiguous, evenly spaced, "
            "untilted axial slices of one matrix",
        )

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(p.code for p in self.problems)
