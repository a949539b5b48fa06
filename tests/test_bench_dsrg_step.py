"""The JAX-vs-PyTorch DSRG step benchmark compares like with like (benchmarks/dsrg_step.py).

Not a timing test: the torch twin computes the same forward as the JAX net with the same weights,
its losses equal ours (values and gradients in P), and a torch step's region growing (scipy) gives
exactly our `dsrg_grow` on the same CRF output.
"""
import functools
import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pydensecrf")

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_dsrg_step",
                                                  ROOT / "benchmarks" / "dsrg_step.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny(bench):
    """A narrow SmallDeepLab on digits warped to 32x32 (grid 9x9), batch 3, synthetic cues."""
    from dsrg_jax.config import DSRGConfig, OptimConfig
    from dsrg_jax.models.small import SmallDeepLab
    from dsrg_jax.weights import get_input_convention

    model = SmallDeepLab(11, widths=(8, 16, 16), head_width=16, dilations=(1, 2))
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(3), jnp.zeros((1, 32, 32, 3)))
    # Non-zero biases and GroupNorm affine terms, so a mis-copied one would show.
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda a: np.asarray(a) + 0.05 * rng.normal(size=a.shape).astype(np.float32), variables)
    # Confident outputs (larger classifier weights), so that the CRF output crosses the growth
    # thresholds and growth really adds cues.
    params = dict(variables["params"])
    for name in [k for k in params if k.endswith("classifier")]:
        params[name] = {**params[name], "kernel": params[name]["kernel"] * 300.0}
    variables = {"params": params}
    grid = (9, 9)
    source, _ = bench.digits_source(6, grid, None)
    batch = bench.make_batch(source, 32, grid, 3, 11)
    s = bench.Setting("digits", model, variables, get_input_convention("torchvision"),
                      DSRGConfig(optim=OptimConfig(base_lr=1e-3)), batch, grid, "synthetic")
    return s, bench.make_torch_net(s)


def test_torch_twin_forward_equals_jax(bench, tiny):
    s, net = tiny
    x = s.convention.normalize(jnp.asarray(s.batch["image"], jnp.float32))
    ref = np.asarray(jax.jit(functools.partial(s.model.apply, train=False))(s.variables, x))
    net.eval()
    with torch.no_grad():
        out = net(bench.torch_input(torch.from_numpy(s.batch["image"]), s.convention))
    out = out.permute(0, 2, 3, 1).numpy()
    assert out.shape == ref.shape == (3, 9, 9, 11)
    np.testing.assert_allclose(out, ref, atol=1e-4 * max(1.0, np.abs(ref).max()), rtol=0)


def test_torch_losses_equal_jax_losses_and_gradients(bench, tiny):
    from dsrg_jax.train import steps as S

    s, _ = tiny
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 9, 9, 11)).astype(np.float32) * 3
    q = rng.dirichlet(np.ones(11), size=(3, 9, 9)).astype(np.float32)
    q = np.maximum(q, 1e-4)
    q /= q.sum(-1, keepdims=True)
    grown = s.batch["cues"] | (rng.random((3, 9, 9, 11)) < 0.1)
    valid = jnp.ones(3, bool)

    def jax_loss(lg):
        from dsrg_jax.ops.losses import probs_from_logits

        return S.dsrg_losses(probs_from_logits(lg), jnp.asarray(q), jnp.asarray(grown), valid,
                             s.dsrg)["loss"]

    ref, ref_grad = jax.jit(jax.value_and_grad(jax_loss))(jnp.asarray(logits))
    lg = torch.from_numpy(logits.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    probs = bench.torch_probs(lg)
    loss = (bench.torch_balanced_seed_loss(probs, torch.from_numpy(grown))
            + bench.torch_constrain_loss(probs, torch.from_numpy(q)))
    loss.backward()
    np.testing.assert_allclose(float(loss.detach()), float(ref), rtol=1e-5)
    np.testing.assert_allclose(lg.grad.numpy().transpose(0, 2, 3, 1), np.asarray(ref_grad),
                               rtol=1e-4, atol=1e-6)


def test_torch_step_growth_equals_dsrg_grow(bench, tiny):
    from dsrg_jax.ops.crf import downsample_image
    from dsrg_jax.ops.grow import dsrg_grow

    s, net = tiny
    step = bench.TorchStep(s, net)
    times = step()
    assert set(times) >= {"forward", "crf", "grow", "loss+backward", "update", "step"}
    last = step.last
    grown = np.asarray(dsrg_grow(jnp.asarray(last["q"]), jnp.asarray(s.batch["cues"]),
                                 jnp.asarray(s.batch["labels"]), theta_fg=s.dsrg.theta_fg,
                                 theta_bg=s.dsrg.theta_bg))
    np.testing.assert_array_equal(last["grown"], grown)
    assert (grown & ~s.batch["cues"]).any()   # growth added cues
    small = np.asarray(downsample_image(jnp.asarray(s.batch["image"], jnp.float32), s.grid,
                                        mean=(0.0, 0.0, 0.0)))
    assert np.abs(small.astype(int) - last["small"].astype(int)).max() <= 1
