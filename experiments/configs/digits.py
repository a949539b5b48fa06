"""The embedded digits dataset on a CPU, from scratch: the whole DSRG pipeline in minutes.

What differs from VOC and why (everything else is the DESIGN default):
  - data: 112x112 canvases used as they are (no 321 warp), 11 classes; no saliency maps, so the
    background cue is the low-CAM fallback;
  - models: reduced-width nets trained from scratch (`model.*="small"`, output stride 4:
    112 -> 29x29 grid); pretrained ImageNet weights do not exist for them;
  - optimisation: far fewer steps (from scratch, small nets, CPU) and larger learning rates; the
    CAM classifier uses Adam (Caffe SGD did not leave the label prior within the CPU budget); the
    DSRG and retrain stages use the official Caffe SGD with the schedule shapes of the official
    code (step x0.33, poly 0.9);
  - multi-scale sizes scaled to the canvas (84/112/140 for 241/321/401; 0.75/1/1.25 at eval).
"""
from dsrg_jax.train.config import (Config, CueConfig, DataConfig, DSRGConfig, EvalConfig,
                                   ModelConfig, OptimConfig, PseudoConfig, RetrainConfig,
                                   RunConfig)


def get_config(quick: bool = False) -> Config:
    """The full digits run, or its `--quick` reduction (fewer images and steps)."""
    n_train, n_val = (400, 100) if quick else (3000, 500)
    steps = (60, 60, 60) if quick else (900, 400, 400)   # cues, dsrg, retrain
    batch = 16
    return Config(
        name="digits-quick" if quick else "digits",
        data=DataConfig(dataset="digits", num_classes=11, train_split="train", val_split="val",
                        input_size=112, crop_size=112, image_size=112, num_train=n_train,
                        num_val=n_val, input_convention="torchvision", num_workers=2),
        model=ModelConfig(segmentation="small", classifier="small", widths=(16, 32, 64),
                          head_width=64, convs_per_block=1, small_dilations=(1, 2, 4, 6)),
        # The classifier learns from scratch: Adam, no extra lr on its (equally new) last layer.
        cues=CueConfig(optim=OptimConfig(optimizer="adam", base_lr=1e-3, schedule="step",
                                         step_size=max(1, steps[0] * 2 // 3), gamma=0.33,
                                         batch_size=batch, max_steps=steps[0], weight_decay=5e-4,
                                         classifier_lr_mult=1.0, classifier_bias_lr_mult=2.0)),
        dsrg=DSRGConfig(optim=OptimConfig(base_lr=5e-3, schedule="step",
                                          step_size=max(1, steps[1] // 3), gamma=0.33,
                                          batch_size=batch, max_steps=steps[1])),
        pseudo=PseudoConfig(sizes=(84, 112, 140), crf=True, batch_size=50),
        retrain=RetrainConfig(optim=OptimConfig(base_lr=5e-3, schedule="poly", power=0.9,
                                                batch_size=batch, max_steps=steps[2])),
        eval=EvalConfig(scales=(0.75, 1.0, 1.25), crf=True, batch_size=50, canvas=None),
        run=RunConfig(seed=0, checkpoint_every=100 if not quick else 20,
                      log_every=20 if not quick else 10, image_log_every=200),
    )
