"""Synthetic cardiac CT: a procedural chest phantom with exact calcium truth.

Public entry points: :func:`sample_spec` (a study's random parameters), :func:`render_study`
(pixels and truth), :func:`write_cohort` (DICOM + truth on disk, ``calcpipe synth``),
:func:`qrm_phantom` (a replica of the real QRM calcium phantom scan),
:func:`qrm_report` (the replica against the real scan's reference scores) and
:func:`calcpipe.synthetic.phantom.render_phantom` (randomised calcium phantoms for
training).
"""

from calcpipe.synthetic.cohort import StudyOptions, preview, write_cohort, write_study
from calcpipe.synthetic.qrm import qrm_phantom, qrm_report
from calcpipe.synthetic.render import RenderedStudy, render_study
from calcpipe.synthetic.spec import Prevalence, Randomisation, StudySpec, sample_spec

#: What the simulator draws, recorded with models trained on it (bump on visible changes).
SIMULATOR = ("2026-11-28: chest, heart, coronary tree, great vessels, bones; lower chest "
             "(diaphragm, liver, stomach gas), costal cartilage, airways, lymph nodes "
             "(calcified with age)")

__all__ = [
    "SIMULATOR",
    "Prevalence",
    "Randomisation",
    "RenderedStudy",
    "StudyOptions",
    "StudySpec",
    "preview",
    "qrm_phantom",
    "qrm_report",
    "render_study",
    "sample_spec",
    "write_cohort",
    "write_study",
]
