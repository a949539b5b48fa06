"""The whole DSRG pipeline on the embedded digits dataset, on a CPU, from scratch.

    python -m experiments.digits                 # full run (7-14 minutes on 2 CPU cores)
    python -m experiments.digits --quick         # reduced run (2.5-5 minutes)
    python -m experiments.digits --ablation --seeds 3   # + the paper's ablation, 3 seeds (33 min)

Writes WORKDIR/results.json ({"miou": {"cues", "dsrg", "retrain"}, "supervision": [...]}),
WORKDIR/figures/*.png, metrics.jsonl, TensorBoard events and checkpoints; rerunning with the same
workdir resumes (or skips finished stages).
"""
from __future__ import annotations

import argparse
import sys

from dsrg_jax import cli
from experiments import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m experiments.digits",
        description="DSRG on the embedded digits dataset (no downloads, no pretrained weights): "
                    "cues -> dsrg -> pseudo-labels -> retrain -> eval.")
    p.add_argument("--workdir", default=None,
                   help="output folder (default runs/digits, or runs/digits-quick with --quick); "
                        "an existing one is resumed")
    p.add_argument("--quick", action="store_true",
                   help="reduced run (400 train / 100 val images, half-width nets, fewer "
                        "steps) used by the tests")
    p.add_argument("--ablation", action="store_true",
                   help="also run the paper's Table 2 rows (fixed cues + SEC loss, + balanced "
                        "loss, + growth, + retrain), its foreground-only / background-only "
                        "growth rows and its theta_f / theta_b study, each in "
                        "WORKDIR/ablation/seed<s>/<row>; table in WORKDIR/ablation/table.md, "
                        "figure table.png, every seed's value in results.json")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="with --ablation: run every row with seeds 0..N-1 (run.seed + i), "
                        "reported as mean +- std")
    p.add_argument("--ablation-rows", default=None, metavar="ROW,ROW",
                   help="with --ablation: only these rows (besides the main run's), by the "
                        "names experiments.ablation.ROW_NAMES lists")
    common.add_run_flags(p)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.seeds < 1:
        sys.exit(f"error: --seeds must be >= 1, got {args.seeds}")
    if (args.seeds > 1 or args.ablation_rows) and not args.ablation:
        sys.exit("error: --seeds and --ablation-rows need --ablation")
    common.init_jax(args)
    common.check_num_devices(args)
    from experiments.configs.digits import get_config

    if args.ablation:   # before the main run, which takes a while
        from experiments.ablation import ROW_NAMES

        rows = ROW_NAMES if args.ablation_rows is None else tuple(args.ablation_rows.split(","))
        if unknown := [r for r in rows if r not in ROW_NAMES]:
            sys.exit(f"error: --ablation-rows: unknown rows {unknown}; known: {list(ROW_NAMES)}")
    cfg = common.apply_run_flags(get_config(quick=args.quick), args)
    workdir = args.workdir or ("runs/digits-quick" if args.quick else "runs/digits")
    out = common.run_and_report(cfg, workdir, common.stages_of(args), args.num_devices,
                                predict=args.predict_split, args_debug=args.debug)
    if args.ablation:
        from dsrg_jax.train.loop import Preempted
        from experiments.ablation import run_ablation

        try:
            cli.run(lambda: run_ablation(cfg, workdir, seeds=[cfg.run.seed + i
                                                              for i in range(args.seeds)],
                                         rows=rows, num_devices=args.num_devices),
                    debug=args.debug)
        except Preempted as e:
            print(str(e), file=sys.stderr, flush=True)
            sys.exit(128 + e.signum)
    return out


if __name__ == "__main__":
    main()
