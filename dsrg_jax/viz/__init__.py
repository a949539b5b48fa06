"""Figures (matplotlib Agg, PNG) in VOC palette colours.

`panels`: array helpers (`cue_colours`, `label_colours`, `overlay`) and the library figures
(`save_cue_growth_figure`, `save_ablation_bars`, `save_supervision_curves`,
`save_class_iou_bars`, ...); `run`: the figures of a finished run (`write_run_figures`, into
WORKDIR/figures).
"""
from dsrg_jax.viz.panels import (
                                 cue_colours,
                                 label_colours,
                                 overlay,
                                 save_ablation_bars,
                                 save_class_iou_bars,
                                 save_cue_growth_figure,
                                 save_growth_figure,
                                 save_overlay_figure,
                                 save_supervision_curves,
                                 to_rgb,
)
from dsrg_jax.viz.run import write_run_figures

__all__ = ["cue_colours", "label_colours", "overlay", "save_ablation_bars", "save_class_iou_bars",
           "save_cue_growth_figure", "save_growth_figure", "save_overlay_figure",
           "save_supervision_curves", "to_rgb", "write_run_figures"]
