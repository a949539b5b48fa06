"""The paper's Table 2 rows and threshold study on one dataset, each a separate run sharing the
main run's cues (same data, same cues, same schedule): `python -m experiments.digits --ablation`.
"""
from __future__ import annotations

import json
import pathlib
import shutil

from dsrg_jax.config import Config, override

# (row name, config changes). The "+ retrain" row is the main run itself.
TABLE2 = (
    ("baseline (fixed cues, SEC seed loss + constrain)",
     {"dsrg.grow": False, "dsrg.seed_loss": "sec"}),
    ("+ balanced seed loss", {"dsrg.grow": False, "dsrg.seed_loss": "balanced"}),
)  # "+ DSRG growth" and "+ retrain" are the main run's dsrg and retrain nets
THRESHOLDS = (
    ("theta_f 0.75", {"dsrg.theta_fg": 0.75}),
    ("theta_f 0.95", {"dsrg.theta_fg": 0.95}),
    ("theta_b 0.95", {"dsrg.theta_bg": 0.95}),
    ("foreground growth only", {"dsrg.grow_bg": False}),
    ("background growth only", {"dsrg.grow_fg": False}),
)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")[:40]


def run_ablation(cfg: Config, workdir, *, num_devices: int | None = None) -> dict:
    """Runs every row (dsrg + eval, retrain off) in workdir/ablation/<row>, reusing
    workdir/cues.npz and the pretrained trunk; writes workdir/ablation/results.json and
    prints a table."""
    from dsrg_jax.pipeline import run
    from dsrg_jax.train.logging import is_writer, log

    workdir = pathlib.Path(workdir)
    if not (workdir / "cues" / "done.json").is_file():
        raise FileNotFoundError(f"{workdir}/cues.npz missing: run the main pipeline first")
    rows = []
    main = json.loads((workdir / "results.json").read_text())
    for group, items in (("table2", TABLE2), ("thresholds", THRESHOLDS)):
        for name, changes in items:
            sub = workdir / "ablation" / _slug(name)
            if is_writer():
                (sub / "cues").mkdir(parents=True, exist_ok=True)
                shutil.copy(workdir / "cues.npz", sub / "cues.npz")
                shutil.copy(workdir / "cues" / "done.json", sub / "cues" / "done.json")
                if (workdir / "pretrain").is_dir():
                    shutil.copytree(workdir / "pretrain", sub / "pretrain",
                                    ignore=shutil.ignore_patterns("checkpoints"),
                                    dirs_exist_ok=True)
            row_cfg = override(cfg, **{"retrain.enabled": False, **changes})
            log(f"[ablation] {name}")
            res = run(row_cfg, sub, stages=("dsrg", "eval"), num_devices=num_devices)
            sup = res.get("supervision", [])
            rows.append({"group": group, "row": name, "changes": changes,
                         "miou": res["miou"].get("dsrg"),
                         "supervision_last": sup[-1] if sup else None})
    main_sup = main.get("supervision") or []
    rows.insert(len(TABLE2), {"group": "table2", "row": "+ DSRG growth (main run)",
                              "changes": {}, "miou": main["miou"].get("dsrg"),
                              "supervision_last": main_sup[-1] if main_sup else None})
    rows.insert(len(TABLE2) + 1, {"group": "table2", "row": "+ retrain (main run)",
                                  "changes": {}, "miou": main["miou"].get("retrain"),
                                  "supervision_last": None})
    out = {"rows": rows}
    if is_writer():
        (workdir / "ablation" / "results.json").write_text(json.dumps(out, indent=2))
        lines = ["| group | row | val mIoU (%) | last-epoch supervision P / R / IoU (%) |",
                 "|---|---|---|---|"]
        for r in rows:
            sup = r["supervision_last"]
            q = (" / ".join(f"{100 * sup[k]:.1f}" for k in ("precision", "recall", "iou"))
                 if sup else "-")
            miou = "-" if r["miou"] is None else f"{100 * r['miou']:.2f}"
            lines.append(f"| {r['group']} | {r['row']} | {miou} | {q} |")
        (workdir / "ablation" / "table.md").write_text("\n".join(lines) + "\n")
        log("\n".join(lines))
    return out
