"""Discovery and series selection: find every CT study under a path or URL, headers only,
and choose the one series per study that Agatston scoring is defined for, with reasons.

* :func:`scan_headers` - header rows (:class:`InstanceHeader`) of every DICOM file;
* :func:`group_studies` - studies and series (:class:`StudyGroup`, :class:`SeriesGroup`);
* :func:`select_series` - a :class:`SelectionDecision` under a rule table (:data:`DEFAULT_RULES`);
* :func:`discover` and :func:`load_study` - the three together, and loading the choice.
"""

from calcpipe.ingest.discover import HEADER_BYTES, HeaderScan, SkippedFile, scan_headers
from calcpipe.ingest.grouping import SeriesGroup, SeriesSummary, StudyGroup, group_studies
from calcpipe.ingest.headers import TABLE_FIELDS, InstanceHeader
from calcpipe.ingest.kernels import kernel_class
from calcpipe.ingest.rules import DEFAULT_RULES, Finding, Rule
from calcpipe.ingest.select import SelectionDecision, SeriesVerdict, select_series
from calcpipe.ingest.study import StudyChoice, discover, load_study

__all__ = [
    "DEFAULT_RULES",
    "HEADER_BYTES",
    "TABLE_FIELDS",
    "Finding",
    "HeaderScan",
    "InstanceHeader",
    "Rule",
    "SelectionDecision",
    "SeriesGroup",
    "SeriesSummary",
    "SeriesVerdict",
    "SkippedFile",
    "StudyChoice",
    "StudyGroup",
    "discover",
    "group_studies",
    "kernel_class",
    "load_study",
    "scan_headers",
    "select_series",
]
