"""The DSRG pipeline as workdir stages: [pretrain ->] cues -> dsrg -> pseudo -> retrain -> eval.

One module per stage (a short story each: inputs, loop, outputs); `stages.STAGE_TABLE` says what
each builds and reads; `runner.run` runs them in order, skipping finished ones."""
from dsrg_jax.pipeline.runner import run
from dsrg_jax.pipeline.stages import STAGE_TABLE, STAGES
from dsrg_jax.pipeline.workdir import Experiment

__all__ = ["STAGES", "STAGE_TABLE", "Experiment", "run"]
