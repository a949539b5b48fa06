"""The notebooks run top to bottom on CPU, unedited (nbclient), and say what they claim."""
import json
import pathlib
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


KERNEL = "dsrg-jax-tests"


def kernel_dir(tmp: pathlib.Path) -> pathlib.Path:
    """A kernelspec that runs this interpreter (whatever other Jupyter kernels are installed)."""
    spec = tmp / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dsrg_jax tests", "language": "python"}))
    return tmp


def run_notebook(name: str, workdir: pathlib.Path, monkeypatch) -> nbformat.NotebookNode:
    """Executes notebooks/<name> in a fresh kernel; outputs go to `workdir`."""
    monkeypatch.setenv("DSRG_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir(workdir / "jupyter")))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def text_of(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o["text"])
            elif "data" in o and "text/plain" in o["data"]:
                out.append(o["data"]["text/plain"])
    return "".join(out)


def images_of(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_notebooks_are_valid_and_committed_without_outputs():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["dsrg_grow_in_your_train_step.ipynb", "quickstart.ipynb"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name


def test_quickstart_runs_and_grows_real_cues(sec_cue_file, tmp_path, monkeypatch):
    monkeypatch.setenv("DSRG_CUE_FILE", str(sec_cue_file))
    nb = run_notebook("quickstart.ipynb", tmp_path, monkeypatch)
    text = text_of(nb)
    assert "10582 images with cues" in text
    assert (tmp_path / "quickstart_growth.png").is_file()
    # The digits pipeline ran in its smallest form and drew its figures and ours.
    digits = tmp_path / "digits"
    assert (digits / "results.json").is_file()
    for path in (digits / "figures" / "growth.png", digits / "figures" / "supervision.png",
                 tmp_path / "digits_iou.png", tmp_path / "digits_overlays.png"):
        assert path.is_file(), path
    assert images_of(nb) >= 5
    # dsrg_jax.evaluate on the run's pseudo-label PNGs gives the mIoU the run logged for them.
    ours = float(re.search(r"^mIoU\s+([\d.]+)$", text, re.M).group(1))
    logged = float(re.search(r"logged by the run: ([\d.]+)", text).group(1))
    assert ours == pytest.approx(logged, abs=0.011)


def test_train_step_notebook_runs(tmp_path, monkeypatch):
    nb = run_notebook("dsrg_grow_in_your_train_step.ipynb", tmp_path, monkeypatch)
    text = text_of(nb)
    assert "vmap == batched: True" in text and "== batched: True" in text.split("shard_map")[-1]
    assert "error: dsrg_grow: `seeds`" in text
    for name in ("train_step_growth.png", "train_step_supervision.png"):
        assert (tmp_path / name).is_file()
