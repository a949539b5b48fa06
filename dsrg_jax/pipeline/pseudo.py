"""Stage `pseudo`: pseudo-labels of the train split from the dsrg net.

Each train image warped to `pseudo.sizes` (241, 321, 401), logits summed at full size, softmax,
the full-resolution CRF, argmax over all classes (official) -> pseudo_labels/<id>.png (VOC
palette, 255 = ignore: what other segmentation frameworks read as label maps). Where the train
split has masks, their mIoU against them is reported.
Output: pseudo_labels/<id>.png, pseudo_labels.txt (the ids), pseudo/done.json.
"""
from __future__ import annotations

from dsrg_jax.data.files import write_id_list, write_label_png
from dsrg_jax.evaluate import Evaluator
from dsrg_jax.pipeline import nets
from dsrg_jax.pipeline.sources import inference_transform
from dsrg_jax.pipeline.splits import (
    canvas_side,
    count_over_processes,
    has_masks,
    inference_batch_of,
    iterate,
    segment_batch,
    valid_rows,
)
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.train import steps
from dsrg_jax.train.logging import is_writer, log


def write_list(exp: Experiment, ids, name: str):
    """WORKDIR/<name>: the image ids, one per line; written by process 0.

    The split file other frameworks read beside the PNG folder."""
    path = exp.path(name)
    if is_writer():
        write_id_list(path, list(ids))
    return path


def run_pseudo(exp: Experiment) -> dict:
    """Writes the pseudo-labels; returns the stage's info."""
    cfg = exp.cfg
    model, variables, conv = nets.load_trained(exp, "dsrg")
    predict = steps.make_predict(model, conv)
    source = exp.dataset.source(cfg.data, "train", with_saliency=False)
    out_dir = exp.path("pseudo_labels")
    with_mask = has_masks(source)
    ev = Evaluator(cfg.data.num_classes)
    count = 0
    transform = inference_transform(canvas_side(exp), with_mask=with_mask)
    for hb, gb in iterate(exp, source, transform,
                          inference_batch_of(exp, cfg.pseudo.batch_size)):
        segs = segment_batch(exp, predict, variables, hb, gb, mode="pseudo", crf=cfg.pseudo.crf,
                             restrict=cfg.pseudo.restrict_to_labels)
        for i in valid_rows(hb):
            pred = segs[i].final
            write_label_png(out_dir / f"{source.ids[int(hb['index'][i])]}.png", pred)
            count += 1
            if with_mask:
                h, w = pred.shape
                ev.add(pred, hb["mask"][i, :h, :w])
    info = {"num_images": count_over_processes(count), "dir": str(out_dir),
            "list": str(write_list(exp, source.ids, "pseudo_labels.txt"))}
    if with_mask:
        info["train_miou"] = ev.result()["miou"]
        log(f"[pseudo] {info['num_images']} pseudo-labels, mIoU against the train ground truth "
            f"{100 * info['train_miou']:.2f}")
    return info
