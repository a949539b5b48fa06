"""The embedded digits dataset on a CPU: the whole DSRG pipeline in minutes, no downloads.

What differs from VOC and why (everything else is the official default):
  - data: 56x56 canvases (the dataset's generator at size 56: bold digits 22-35 px tall with
    8-11 px strokes, 2.3-2.9 output cells; about 25% foreground) used as they are (no 321
    warp), 11 classes; no saliency maps, so the background cue is the low-CAM fallback; no flips
    (a mirrored digit is not a digit);
  - time: the 10-minute main run and the 60-minute 3-seed ablation (24 DSRG trainings) on 2 CPU
    cores set the step counts: dsrg and retrain 150 steps of 20 images (one epoch; measured: the
    main run 6 min 45 s, the whole ablation command 32.6 min, docs/results.md). The ASPP
    branches are 64 wide (half the CAM head; the step's time barely depends on it);
  - "ImageNet": there are no pretrained weights for the small nets, so a `pretrain` stage first
    trains a 10-way classifier on single-digit crops (image-level labels only, the train split's
    digit pool, `GlyphSource`); its trunk initialises the CAM, DSRG and retrain nets, as the
    ImageNet VGG16 does on VOC. Without it the CAM classifier stays on the label prior for
    more than 1000 steps (docs/results.md);
  - models: reduced-width nets (`model.*="small"`, GroupNorm, output stride 4: 56 -> 15x15 grid,
    the VOC ratio 321 -> 41); the CAM net's conv6/conv7 undilated (`small_cam_dilation=1`):
    with dilation 2 its CAMs spill a cell past the objects and the foreground cues were 45.4%
    precise, with 1 they are 51.4% (docs/results.md); `--quick` halves every width;
  - optimisation: far fewer steps (CPU), and Adam (no weight decay) for every stage: the new
    heads of the small nets learn from scratch, and Caffe SGD at the official rates leaves the
    DSRG net at "all background" within the CPU budget. Only the CAM net's classifier keeps an
    lr multiplier (10, as the official new fc8), which makes the cue stage leave the label prior
    early on any CPU (200 steps; before: 400 and no multiplier). The schedule shape of
    the official DSRG stage stays (step x0.33), also for retrain (poly 0.9 left it far behind);
  - multi-scale sizes scaled to the canvas (42/56/70 for 241/321/401; 0.75/1/1.25 at eval).
"""
from dsrg_jax.config import (
    Config,
    CueConfig,
    DataConfig,
    DSRGConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    PseudoConfig,
    RetrainConfig,
    RunConfig,
)

SIZE = 56


def adam(lr: float = 1e-3, *, batch_size: int, max_steps: int, schedule: str = "step",
         classifier_lr_mult: float = 1.0, **kw) -> OptimConfig:
    """Adam as every digits stage uses it: no weight decay; `classifier_lr_mult` on the last
    layer's weights and bias (1: none).

    Schedule "step" as the official DSRG stage (x0.33 at 2/3 of the steps)."""
    if schedule == "step":
        kw.setdefault("step_size", max(1, max_steps * 2 // 3))
    return OptimConfig(optimizer="adam", base_lr=lr, schedule=schedule, batch_size=batch_size,
                       max_steps=max_steps, gamma=0.33, weight_decay=0.0,
                       classifier_lr_mult=classifier_lr_mult,
                       classifier_bias_lr_mult=classifier_lr_mult, **kw)


def get_config(quick: bool = False) -> Config:
    """The full digits run, or its `--quick` reduction (fewer images and steps)."""
    n_train, n_val = (400, 100) if quick else (3000, 500)
    # --quick: narrower nets (a quarter of the compute) and fewer images and steps; the pretrain
    # stage still needs ~20k glyph examples to leave the label prior, and draws the full run's
    # 6,000 glyph images: on a trunk fit to 2,000 (13 passes) float rounding decided whether the
    # CAM net left the label prior (JAX 0.12 on 8 devices: all background); with 6,000, CAM val
    # mIoU 17.3 on JAX 0.10.2 and 0.12 alike (docs/results.md).
    pre_steps = 800 if quick else 1000
    # cues, dsrg, retrain. --quick's dsrg stage: 120 steps (was 100; from the same trunk and cues
    # on 2 devices: 100 steps -> pseudo-labels 1.5% foreground and a retrain at all background,
    # 120 -> DSRG 16.3, retrain 14.0; docs/results.md "--quick").
    steps = (200, 120, 60) if quick else (200, 150, 150)
    widths, head = ((16, 32, 64), 64) if quick else ((32, 64, 128), 128)
    seg_head = None if quick else 64   # the ASPP branches: half the CAM head's width
    return Config(
        name="digits-quick" if quick else "digits",
        data=DataConfig(dataset="digits", num_classes=11, train_split="train", val_split="val",
                        input_size=SIZE, crop_size=SIZE, image_size=SIZE, num_train=n_train,
                        num_val=n_val, input_convention="torchvision", num_workers=2,
                        flip=False),
        model=ModelConfig(segmentation="small", classifier="small", widths=widths,
                          head_width=head, convs_per_block=2, small_dilations=(1, 2, 3, 4),
                          small_cam_dilation=1, small_seg_head_width=seg_head),
        # The digits' ImageNet: a 10-way classifier on single-digit crops; its trunk starts
        # every later net.
        pretrain=PretrainConfig(enabled=True, image_size=32, num_images=6000,
                                optim=adam(batch_size=32, max_steps=pre_steps,
                                           schedule="constant")),
        # The CAM net's classifier at 10x the rate (as the official prototxts' new fc8, lr_mult
        # 10): without it the multi-label loss sat on the label prior until step ~300 and when
        # it left depended on the CPU's float rounding (CAM val mIoU 40.7 on one machine, 18.6
        # on another after 400 steps); with it the prior is left by step ~60 (docs/results.md).
        cues=CueConfig(optim=adam(batch_size=32, max_steps=steps[0], schedule="constant",
                                  classifier_lr_mult=10.0)),
        # The exact CRF on the 15x15 grid: 5 ms against 52 ms for the lattice on CPU.
        dsrg=DSRGConfig(crf_kernel="auto", optim=adam(batch_size=20, max_steps=steps[1])),
        pseudo=PseudoConfig(sizes=(42, 56, 70), crf=True, batch_size=100),
        # Retrain: the step schedule too (poly 0.9 over 400 steps ended at 17.3 val mIoU against
        # 27.2 with step x0.33 at 2/3, same pseudo-labels; docs/results.md).
        retrain=RetrainConfig(optim=adam(batch_size=20, max_steps=steps[2])),
        eval=EvalConfig(scales=(0.75, 1.0, 1.25), crf=True, batch_size=100, canvas=None),
        run=RunConfig(seed=0, checkpoint_every=100,
                      log_every=20 if not quick else 10,
                      image_log_every=100 if not quick else 30),
    )
