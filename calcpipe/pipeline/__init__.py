"""The cohort pipeline's stages, free of Prefect and of any cluster.

index (:mod:`.index`) -> plan (:mod:`.plan`) -> score (:mod:`.work`, per study, on a
worker) -> commit and finish (:mod:`.run`) -> report (:mod:`.report`). The Prefect flow
``calcpipe.flows.score_cohort`` runs these stages as tasks over a Dask cluster;
:func:`run_single_process` runs them in one process.
"""

from calcpipe.pipeline.params import SECRET_ENV, ScoreParams
from calcpipe.pipeline.run import Run, run_single_process

__all__ = ["SECRET_ENV", "Run", "ScoreParams", "run_single_process"]
