"""benchmarks/accelerator.py runs end to end at tiny shapes and its ResNet-101 twin is our net.

Not a timing test: the command's JSON holds the header and the three parts with positive times,
and the torch twin of DeepLab-v2 ResNet-101 (the one twin that benchmark defines itself)
computes our logits from our weights and takes a peer step.
"""
import functools
import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrg_jax.models import create_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accelerator.py"
HEADER_FIELDS = ("device_kind", "platform", "device_count", "jax", "jaxlib", "cuda", "torch",
                 "xla_flags", "command", "environment_info")


@pytest.fixture(scope="module")
def acc():
    spec = importlib.util.spec_from_file_location("bench_accelerator", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_tiny_run_reports_every_part(tmp_path):
    out = tmp_path / "acc.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--repeats", "2", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert all(k in res["header"] for k in HEADER_FIELDS)
    assert "--tiny" in res["header"]["command"]

    assert [r["dtype"] for r in res["step"]] == ["float32", "bfloat16"]
    for ours in res["step"]:
        for k in ("ms_per_step", "images_per_s", "compile_s", "dsrg_stage_h", "retrain_h"):
            assert ours[k] > 0, k
        assert "peak_device_bytes" in ours
    assert "| small | bfloat16 |" in proc.stdout

    peer = res["peer"]
    crf_ok = res["header"]["pydensecrf2"]
    if crf_ok and importlib.util.find_spec("torch") is not None:
        eager = [r for r in peer if r["variant"] == "eager"]
        assert len(eager) == 1 and eager[0]["ms_per_step"] > 0
        assert all(v > 0 for v in eager[0]["phases_ms"].values())
    else:
        assert all("skipped" in r or "error" in r for r in peer)

    parts = res["parts"]
    assert parts["grow"]["device_ms"] > 0 and parts["grow"]["host_ms"] > 0
    assert parts["grow"]["equal"]
    assert parts["crf"]["device_ms"] > 0
    assert parts["inference"]["ms"] > 0
    if crf_ok:
        assert parts["crf"]["host_ms"] > 0 and parts["inference"]["with_host_crf_ms"] > 0
    for title in ("ms/step", "ours / peer", "dsrg_grow vs dsrg_grow_scipy"):
        assert title in proc.stdout


def test_resnet_twin_equals_our_net_and_steps(acc):
    torch = pytest.importorskip("torch")
    pytest.importorskip("pydensecrf")
    from benchmarks import dsrg_step as bench  # on the path once the benchmark is imported

    model = create_model("deeplab_resnet101", num_classes=5, blocks=(1, 2, 1, 1))
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), jnp.zeros((1, 33, 33, 3)))
    # Non-trivial frozen batch norms, so a mis-folded statistic would show.
    rng = np.random.default_rng(0)
    stats = jax.tree_util.tree_map_with_path(
        lambda p, a: np.asarray(a) * rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        if jax.tree_util.keystr(p).endswith(("['var']", "['scale']"))
        else np.asarray(a) + 0.1 * rng.normal(size=a.shape).astype(np.float32),
        variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}
    grid = (5, 5)
    s = acc.Setting("deeplab_resnet101", model, variables, acc.get_input_convention("caffe"),
                    acc.DSRGConfig(), acc.synthetic_batch(2, 33, grid, 5), grid)
    module, forward = acc.resnet_twin(model, variables)
    assert acc.check_twin(s, module, forward) < 1e-4

    step = acc.PeerStep(bench, s, module, forward, torch.device("cpu"))
    before = module["convs"]["aspp_1__classifier"].weight.detach().clone()
    times = step()
    assert times["step"] > 0 and set(times) >= {"CRF (host)", "growth (host)"}
    assert not torch.equal(before, module["convs"]["aspp_1__classifier"].weight)
    assert all(not p.requires_grad for p in module["norms"].parameters())
