"""`python -m experiments.grow_demo`: grows real cue layouts, agrees with the scipy reference,
draws the figure and writes its summary."""
import json

from experiments import grow_demo


def test_grow_demo_grows_real_cues_and_draws_them(sec_cue_file, tmp_path, capsys):
    summary = grow_demo.main(["--cues", str(sec_cue_file), "--num-images", "3",
                              "--workdir", str(tmp_path)])
    assert summary["matches_scipy_reference"] and len(summary["image_ids"]) == 3
    assert summary["grown_coverage"] > summary["cue_coverage"] > 0.0   # cues only ever grow
    assert (tmp_path / "growth.png").stat().st_size > 5000
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert "identical to the scipy reference" in capsys.readouterr().out
