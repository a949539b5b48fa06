"""The paper's ablation on one dataset, over several seeds.

`python -m experiments.digits --ablation --seeds 3`.

Rows (the paper's VOC 2012 val mIoU, VGG16, beside each where it gives one):
  table2      baseline: fixed cues, SEC seed loss (52.5); + balanced seed loss (53.6);
              + DSRG growth (57.6); + retrain (59.0)
  growth      foreground growth only (55.9); background growth only (54.3)
  thresholds  theta_f 0.75 / 0.85 / 0.95 at theta_b 0.99, theta_b 0.95 / 0.99 at theta_f 0.85
              (the paper's Table 4 study; its values are not reproduced here)

Every row of every seed is its own run in WORKDIR/ablation/seed<s>/<row> with the main run's
pretrained trunk and seed cues (copied in: all rows and seeds share the cues, as the paper's rows
share theirs); `run.seed = s` changes what the DSRG stage draws: the new layers' init, dropout
and the data order. The main run is seed `run.seed`'s "+ DSRG growth" / "+ retrain" row; for the
other seeds that row is a run of dsrg -> pseudo -> retrain -> eval. Writes
WORKDIR/ablation/results.json (every seed's value, mean, std), table.md and table.png.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import numpy as np

from dsrg_jax.config import Config, override


@dataclasses.dataclass(frozen=True)
class Row:
    """One ablation row: group, name, config changes, the paper's VOC val mIoU and the result key.

    The config changes are against the main run; the paper's VOC val mIoU is None where the paper
    gives none here; the result key is the one it reads."""

    group: str
    name: str
    changes: dict
    paper: float | None = None
    result: str = "dsrg"          # "dsrg" or "retrain": which net's val mIoU
    main: bool = False            # the main run's net (no separate run)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.name).strip("_")[:40]


ROWS = (
    Row("table2", "baseline: fixed cues, SEC seed loss",
        {"dsrg.grow": False, "dsrg.seed_loss": "sec"}, 52.5),
    Row("table2", "+ balanced seed loss", {"dsrg.grow": False}, 53.6),
    Row("table2", "+ DSRG growth", {}, 57.6, main=True),
    Row("table2", "+ retrain", {}, 59.0, result="retrain", main=True),
    Row("growth", "foreground growth only", {"dsrg.grow_bg": False}, 55.9),
    Row("growth", "background growth only", {"dsrg.grow_fg": False}, 54.3),
    Row("thresholds", "theta_f 0.75, theta_b 0.99", {"dsrg.theta_fg": 0.75}),
    Row("thresholds", "theta_f 0.85, theta_b 0.99", {}, main=True),
    Row("thresholds", "theta_f 0.95, theta_b 0.99", {"dsrg.theta_fg": 0.95}),
    Row("thresholds", "theta_f 0.85, theta_b 0.95", {"dsrg.theta_bg": 0.95}),
)
ROW_NAMES = tuple(r.slug for r in ROWS)
# The paper's Fig. 4: supervision precision / recall / IoU (%) on VOC train, epoch 0 and 12.
PAPER_SUPERVISION = {"epoch_0": (62.6, 32.1, 30.0), "epoch_12": (63.9, 65.4, 57.1)}


def _share_main_outputs(workdir: pathlib.Path, sub: pathlib.Path) -> None:
    """Copies the main run's cues (and pretrained trunk) into a row's workdir."""
    (sub / "cues").mkdir(parents=True, exist_ok=True)
    shutil.copy(workdir / "cues.npz", sub / "cues.npz")
    shutil.copy(workdir / "cues" / "done.json", sub / "cues" / "done.json")
    if (workdir / "pretrain").is_dir():
        shutil.copytree(workdir / "pretrain", sub / "pretrain",
                        ignore=shutil.ignore_patterns("checkpoints"), dirs_exist_ok=True)


def _last_supervision(res: dict) -> dict | None:
    sup = res.get("supervision") or []
    return sup[-1] if sup else None


def summarise(values: list[float]) -> dict:
    """{"mean", "std" (sample std, ddof 1; 0 for one value), "n"} of a row's per-seed values."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": len(v)}


def run_ablation(cfg: Config, workdir, *, seeds=(0,), rows=ROW_NAMES,
                 num_devices: int | None = None) -> dict:
    """Runs `rows` (slugs of ROWS) for every seed; returns and writes the table.

    Needs the main run in `workdir` (its cues, trunk and results.json). Finished rows are
    skipped on a rerun (each is a resumable run)."""
    from dsrg_jax.pipeline import run
    from dsrg_jax.train.logging import is_writer, log

    workdir = pathlib.Path(workdir)
    if not (workdir / "cues" / "done.json").is_file() or not (workdir / "results.json").is_file():
        raise FileNotFoundError(f"{workdir}: the main run is not finished (no cues/done.json or "
                                f"results.json): run the main pipeline first")
    unknown = sorted(set(rows) - set(ROW_NAMES))
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; known: {list(ROW_NAMES)}")
    main_results = json.loads((workdir / "results.json").read_text())
    base_seed = cfg.run.seed
    per_seed: dict[int, dict] = {}
    for seed in seeds:
        results: dict[str, dict] = {}
        seed_dir = workdir / "ablation" / f"seed{seed}"
        for row in (r for r in ROWS if r.slug in rows or r.main):
            if row.main:
                if "main" not in results:
                    if seed == base_seed:
                        results["main"] = main_results
                    else:
                        sub = seed_dir / "main"
                        if is_writer():
                            _share_main_outputs(workdir, sub)
                        log(f"[ablation] seed {seed}: main run (dsrg, pseudo, retrain, eval)")
                        results["main"] = run(override(cfg, **{"run.seed": seed}), sub,
                                              stages=("dsrg", "pseudo", "retrain", "eval"),
                                              num_devices=num_devices)
                continue
            sub = seed_dir / row.slug
            if is_writer():
                _share_main_outputs(workdir, sub)
            log(f"[ablation] seed {seed}: {row.name}")
            row_cfg = override(cfg, **{"retrain.enabled": False, "run.seed": seed,
                                       **row.changes})
            results[row.slug] = run(row_cfg, sub, stages=("dsrg", "eval"),
                                    num_devices=num_devices)
        per_seed[seed] = results

    table = []
    for row in ROWS:
        if not (row.main or row.slug in rows):
            continue
        runs = [per_seed[s]["main" if row.main else row.slug] for s in seeds]
        values = [r["miou"].get(row.result) for r in runs]
        entry = {"group": row.group, "row": row.name, "changes": row.changes,
                 "paper_voc_val": row.paper, "seeds": list(seeds), "miou": values}
        if all(v is not None for v in values):
            entry.update(summarise(values))
        if row.result == "dsrg":
            entry["supervision_last"] = [_last_supervision(r) for r in runs]
        table.append(entry)
    out = {"rows": table, "seeds": list(seeds), "paper_supervision": PAPER_SUPERVISION}
    if is_writer():
        folder = workdir / "ablation"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(out, indent=2))
        md = markdown_table(table)
        (folder / "table.md").write_text(md + "\n")
        from dsrg_jax.viz import save_ablation_bars

        save_ablation_bars(folder / "table.png", table)
        log(md)
        log(f"[ablation] table: {folder / 'table.md'}, figure: {folder / 'table.png'}, every "
            f"seed's value: {folder / 'results.json'}")
    return out


def markdown_table(table: list[dict]) -> str:
    """The rows as a markdown table.

    Mean +- std over the seeds, each seed's value, the last epoch's supervision (mean over seeds)
    and the paper's VOC value."""
    lines = ["| group | row | val mIoU (%), mean ± std | per seed | last-epoch supervision "
             "P / R / IoU (%) | paper, VOC 2012 val |", "|---|---|---|---|---|---|"]
    for r in table:
        if "mean" in r:
            stat = f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} (n={r['n']})"
        else:
            stat = "-"
        seeds = " / ".join("-" if v is None else f"{100 * v:.2f}" for v in r["miou"])
        sups = [s for s in r.get("supervision_last") or [] if s]
        sup = (" / ".join(f"{100 * np.mean([s[k] for s in sups]):.1f}"
                          for k in ("precision", "recall", "iou")) if sups else "-")
        paper = "-" if r["paper_voc_val"] is None else f"{r['paper_voc_val']:.1f}"
        lines.append(f"| {r['group']} | {r['row']} | {stat} | {seeds} | {sup} | {paper} |")
    return "\n".join(lines)
