"""The root of calcpipe's exception hierarchy.

Every known input problem raises a subclass of :class:`CalcpipeError` carrying a stable
``code`` (the reason written to the ``failures`` table) and a message that names the file,
the series, the attribute and what would fix it. Anything else is a bug and propagates.
"""

from __future__ import annotations


class CalcpipeError(Exception):
    """Base class of every error calcpipe raises on purpose.

    Parameters
    ----------
    message : str
        What is wrong, in words a data manager can act on.
    code : str
        Stable machine-readable reason (snake_case), for tables and tests.
    path : str, optional
        The file or folder concerned.
    series_uid : str, optional
        The series concerned.
    attribute : str, optional
        The DICOM keyword (or other attribute) at fault.
    fix : str, optional
        What would make the input acceptable.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        path: str | None = None,
        series_uid: str | None = None,
        attribute: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.path = path
        self.series_uid = series_uid
        self.attribute = attribute
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [f"[{self.code}] {self.message}"]
        if self.path:
            parts.append(f"file: {self.path}")
        if self.series_uid:
            parts.append(f"series: {self.series_uid}")
        if self.attribute:
            parts.append(f"attribute: {self.attribute}")
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return "; ".join(parts)
