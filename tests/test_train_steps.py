"""The DSRG train step: its supervision is the real growth, and it is the same on 1 and 8
devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from dsrg_jax import dsrg_grow
from dsrg_jax.config import DSRGConfig, OptimConfig
from dsrg_jax.models.small import SmallCAM, SmallDeepLab
from dsrg_jax.ops.crf import dense_crf
from dsrg_jax.ops.losses import probs_from_logits
from dsrg_jax.sharding import global_batch, make_mesh, replicate
from dsrg_jax.train import steps as S
from dsrg_jax.train.optim import caffe_sgd
from dsrg_jax.weights import get_input_convention

CONV = get_input_convention("torchvision")
MODEL = SmallDeepLab(5, widths=(4, 8), head_width=8, convs_per_block=1, dilations=(1, 2))
SIZE = 32  # -> 17x17 output grid


def _batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    grid = (17, 17)
    # Smooth images (a coloured square on a grey ground): a well-conditioned CRF, so float
    # rounding differences (fusion order, device count) do not flip its mean-field iterations.
    images = np.full((n, SIZE, SIZE, 3), 110, np.uint8)
    for i in range(n):
        images[i, 12:22, 10:24] = rng.integers(0, 256, 3)
    labels = np.zeros((n, 5), bool)
    labels[:, 0] = True
    labels[np.arange(n), rng.integers(1, 5, n)] = True
    cues = np.zeros((n, *grid, 5), bool)
    cues[:, :3, :, 0] = True                                   # background cue on top rows
    for i in range(n):
        c = np.flatnonzero(labels[i])[1]
        cues[i, 8:11, 8:11, c] = True                          # a foreground blob
    mask = np.zeros((n, *grid), np.uint8)
    mask[:, 6:13, 6:13] = np.flatnonzero(labels[0])[1]
    return {"image": images, "labels": labels, "cues": cues, "grid_mask": mask}


def _state(mesh, tx_cfg=OptimConfig(base_lr=1e-2)):
    variables = MODEL.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    tx = caffe_sgd(variables["params"], tx_cfg)
    return replicate(S.create_state(variables["params"], tx, seed=3), mesh), tx


def test_step_supervision_is_dsrg_grow_of_the_crf_output():
    cfg = DSRGConfig(crf_kernel="exact")
    mesh = make_mesh()
    state, tx = _state(mesh)
    params = jax.device_get(state["params"])
    step = S.make_dsrg_train_step(MODEL, tx, CONV, mesh, cfg)
    hb = _batch(8)
    _, aux = step(state, global_batch(hb, mesh))
    probs = np.asarray(aux["images"]["probs"])
    # The step's probabilities are the model's (train mode: dropout keys as in the step).
    logits = S.apply_with_dropout(MODEL, {"params": params},
                                  CONV.normalize(jnp.asarray(hb["image"], jnp.float32)),
                                  jax.random.fold_in(jax.random.key(3), 0))
    # ... floored in place as the official CRF layer does (P < 1e-4 -> 1e-4).
    np.testing.assert_allclose(probs, np.maximum(probs_from_logits(logits), 1e-4), rtol=1e-4,
                               atol=1e-6)
    assert probs.min() >= 1e-4
    # The CRF's image is the official CRF layer's: the BGR blob zoomed (order 1), + mean, round.
    mean = np.array([104.0, 117.0, 123.0])
    blob = hb["image"][..., ::-1].astype(np.float64) - mean
    official = np.round(ndimage.zoom(blob, (1, 17 / SIZE, 17 / SIZE, 1), order=1) + mean)
    step_small = np.asarray(aux["images"]["image_small"])
    assert np.abs(step_small.astype(int) - official).max() <= 1    # float32 rounding at .5
    assert (step_small != official).mean() < 1e-3
    # CRF by hand on the step's probabilities, then growth from the ORIGINAL cues.
    q = dense_crf(jnp.asarray(step_small), jnp.asarray(probs), cfg.crf, kernel=cfg.crf_kernel)
    np.testing.assert_allclose(np.asarray(aux["images"]["crf"]), q, rtol=1e-4, atol=1e-5)
    grown = dsrg_grow(jnp.asarray(aux["images"]["crf"]), jnp.asarray(hb["cues"]),
                      jnp.asarray(hb["labels"]))
    np.testing.assert_array_equal(np.asarray(aux["images"]["grown"]), np.asarray(grown))
    assert np.all(np.asarray(aux["images"]["grown"]) >= hb["cues"])  # only ever added


def test_growth_restarts_from_the_original_cues_every_step():
    mesh = make_mesh()
    state, tx = _state(mesh)
    step = S.make_dsrg_train_step(MODEL, tx, CONV, mesh, DSRGConfig(crf_kernel="exact"))
    hb = _batch(8)
    for _ in range(2):
        state, aux = step(state, global_batch(hb, mesh))
        grown = dsrg_grow(jnp.asarray(aux["images"]["crf"]), jnp.asarray(hb["cues"]),
                          jnp.asarray(hb["labels"]))
        np.testing.assert_array_equal(np.asarray(aux["images"]["grown"]), np.asarray(grown))


@pytest.mark.parametrize("batch", [8, 10])  # 10: padded to 16 on 8 devices
def test_train_steps_same_on_1_and_8_devices(batch):
    assert len(jax.devices()) == 8
    cfg = DSRGConfig(crf_kernel="lattice")
    losses = {}
    for n in (1, 8):
        mesh = make_mesh(n)
        state, tx = _state(mesh)
        step = S.make_dsrg_train_step(MODEL, tx, CONV, mesh, cfg)
        out = []
        for i in range(3):
            state, aux = step(state, global_batch(_batch(batch, seed=i), mesh))
            m = jax.device_get(aux["metrics"])
            out.append([float(m["loss"]), float(m["seed_loss"]), float(m["constrain_loss"])])
            counts = m["counts_grown"]
        losses[n] = (np.array(out), counts, jax.device_get(state["params"]))
    np.testing.assert_allclose(losses[1][0], losses[8][0], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(losses[1][1], losses[8][1])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 losses[1][2], losses[8][2])


def test_cam_step_same_on_1_and_8_devices_with_padding():
    model = SmallCAM(4, widths=(4, 8), head_width=8, convs_per_block=1)
    out = {}
    for n in (1, 8):
        mesh = make_mesh(n)
        v = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
        tx = caffe_sgd(v["params"], OptimConfig(base_lr=1e-2))
        state = replicate(S.create_state(v["params"], tx), mesh)
        step = S.make_cam_train_step(model, tx, CONV, mesh)
        hb = _batch(10)
        losses = []
        for _ in range(2):
            state, aux = step(state, global_batch({"image": hb["image"], "labels": hb["labels"]},
                                                  mesh))
            losses.append(float(aux["metrics"]["loss"]))
        out[n] = losses
    np.testing.assert_allclose(out[1], out[8], rtol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters_and_close_losses():
    """`model.dtype = "bfloat16"` (`--dtype bfloat16`): the nets compute in bf16, the parameters,
    optimiser state and losses stay float32, and a DSRG step's losses stay close to float32's."""
    from dsrg_jax.config import ModelConfig
    from dsrg_jax.models import model_for

    m = ModelConfig(segmentation="small", classifier="small", widths=(4, 8), head_width=8,
                    convs_per_block=1, small_dilations=(1, 2), dtype="bfloat16")
    bf16 = model_for(m, "seg", 5)
    assert bf16.dtype == jnp.bfloat16 and model_for(m, "cam", 5).dtype == jnp.bfloat16
    f32 = SmallDeepLab(5, widths=(4, 8), head_width=8, convs_per_block=1, dilations=(1, 2))
    variables = f32.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    images = jnp.asarray(_batch(2)["image"], jnp.float32) / 255.0
    out16, out32 = bf16.apply(variables, images), f32.apply(variables, images)
    assert out16.dtype == jnp.float32
    assert np.abs(np.asarray(out16 - out32)).max() < 0.05 * np.abs(np.asarray(out32)).max()

    mesh = make_mesh(1)
    losses = {}
    for name, model in (("bf16", bf16), ("f32", f32)):
        params = jax.tree.map(np.array, variables["params"])   # the step donates its state
        tx = caffe_sgd(params, OptimConfig(base_lr=1e-2))
        state = replicate(S.create_state(params, tx, seed=3), mesh)
        step = S.make_dsrg_train_step(model, tx, CONV, mesh, DSRGConfig(crf_kernel="exact"))
        state, aux = step(state, global_batch(_batch(4), mesh))
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state["params"]))
        losses[name] = float(aux["metrics"]["loss"])
    assert losses["bf16"] == pytest.approx(losses["f32"], rel=0.05)
