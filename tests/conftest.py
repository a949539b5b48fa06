"""Test set-up: 8 simulated CPU devices, the location of the shared real data, and a compile cache.

The XLA flag must be set before JAX initialises its backend, so it is set here, at import time of
the conftest, before any test module imports jax.
"""
import os
import pathlib
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The experiments' persistent compilation cache (dsrg_jax.compile_cache): one new folder per test
# run, made by the first process that loads this file (the xdist controller; its workers and the
# runs they start inherit the variable), never the user's ~/.cache; removed by its maker at the end.
_MADE_COMPILE_CACHE = "DSRG_JAX_COMPILE_CACHE" not in os.environ
if _MADE_COMPILE_CACHE:
    os.environ["DSRG_JAX_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="dsrg_jax_test_xla_")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Real data shipped beside the project (never copied into it); DSRG_SHARED_DATA overrides.
SHARED_DATA = pathlib.Path(
    os.environ.get("DSRG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")
).resolve()


def pytest_unconfigure(config):
    """The process that made the run's compile cache folder removes it."""
    if _MADE_COMPILE_CACHE:
        shutil.rmtree(os.environ["DSRG_JAX_COMPILE_CACHE"], ignore_errors=True)


def shared_path(*parts: str) -> pathlib.Path:
    """Path under ../shared/data, or skip the calling test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set DSRG_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def sec_cue_file() -> pathlib.Path:
    """SEC's published cue pickle (gzip, Python 2); DSRG's own file has the same layout."""
    return shared_path("sec", "localization_cues.pickle.gz")


@pytest.fixture(scope="session")
def sec_input_list() -> pathlib.Path:
    """The train_aug input list that indexes the cue file."""
    return shared_path("sec", "input_list.txt")


@pytest.fixture(scope="session")
def voc_mini() -> pathlib.Path:
    """16 real VOC 2012 images with ground truth, in VOCdevkit layout."""
    return shared_path("voc_mini")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow (the full digits run against "
                          "docs/results.md: about 10 minutes on 2 CPU cores)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
