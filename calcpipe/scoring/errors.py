"""Errors for bad scoring input: each names the parameter and the offending value."""

from __future__ import annotations

from calcpipe.errors import CalcpipeError


class ScoringInputError(CalcpipeError, ValueError):
    """A scoring argument is invalid (shape, dtype, value or unknown name)."""

    def __init__(self, parameter: str, value: object, problem: str, fix: str | None = None):
        self.parameter = parameter
        self.value = value
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(f"{parameter}={shown}: {problem}", code="invalid_scoring_input",
                         attribute=parameter, fix=fix)
