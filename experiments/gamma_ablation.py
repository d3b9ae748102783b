"""GAMMA against GenDet, and GAMMA's ablation (issue 13, "What it must show"), over seeds.

The world is the demo's (``pipelines.demo.zoo_shards``: every installed photo source, native crops of
64/128/256 px, half of each label's images JPEG, the photo split train/val/test) with every zoo family.
Training side, all from train-split photos: the reals, the fakes of the training family
(``ae_nearest_f8``, the demo's) and one manipulation of each of its train-split reals
(``gendet.data.manipulation_shards``: splice with the training family's fakes as donors, copy_move,
perturb, and inpaint by the *training* family's generator, never ``inpaint_f8``). Test side: the
test-split reals and fakes of every family; ``inpaint_f8``'s fakes regenerate one blob of 15-50 % of
a real photo and carry their masks (``mask.png`` in the zoo's shards). Tuning and the calibrated
threshold use the val split of the training side only.

Arms (each trained per seed on ``spectrum:v2``'s 16 x 16 token grid, 288 values a token since 0.6.0 and
96 in the tables before, or its pooled 344-d feature, computed here in-process with
``Encoder.features_and_tokens``):

* ``gamma``: the full model on reals + whole fakes + manipulations (seg targets: the masks on the grid);
* ``gamma -manip``: reals + whole fakes only (seg targets 0 for reals, 1 for fakes);
* ``gamma +gen``: reals + whole fakes + the generated kinds only (splice, inpaint: no copy-move or
  perturb, which the encoder barely sees), and ``gendet +gen`` / ``probe +gen`` on its rows;
* ``gamma +dice``: head 1 also trained with a soft Dice loss (``dice_weight=1``: overlap, not per token);
  ``gamma +gen +dice``: both;
* ``gamma -reverse``: ``reverse_attention=False``; ``gamma -seg``: ``seg_heads=False`` (no reverse either);
  ``gamma +gen -reverse`` / ``gamma +gen -seg``: the same on the ``+gen`` rows;
* ``gendet`` / ``linear_probe``: ``train_all`` on the pooled features of reals + whole fakes (the
  standard protocol), and ``gendet +manip`` / ``probe +manip`` on the same rows as ``gamma``.

Every arm's data is balanced: as many reals as fakes, the training family's own reals first, then
real crops other families drew from train-split photos (no fake of another family is ever shown).
Scores: accuracy at 0.5 and at a threshold set for 5 % FPR on the val-split reals (every family's),
AP; pixel F1/IoU of head 1's masks (``pixel_masks`` on the 256 px token canvas, ``gendet.eval.pixel``)
on partial fakes: the test ``inpaint_f8`` fakes and, training-side, the val manipulations per kind.

``--dice-weight`` and ``--seg-context`` set every GAMMA arm's (the first table: 0 and 0, its ``+dice`` arms
1); ``--per-image N`` draws N manipulations per training-side real (its own world and cache: more partial
fakes to learn from, ``ManipulateConfig.per_image``).

    nice -n 10 python -m experiments.gamma_ablation --seeds 0 1 2     # -> results/gamma-ablation-cpu2.md|json
    nice -n 10 python -m experiments.gamma_ablation --seeds 0 1 2 --per-image 5 --seg-context 4 --dice-weight 2 \
        --arms "gamma +gen" "gamma -manip" "gamma +gen -reverse" "gamma +gen -seg" gendet "gendet +gen" --tag x5
    nice -n 10 python -m experiments.gamma_ablation --seeds 0 --arms gamma --tag pilot
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from experiments.gamma_world import KINDS, TRAIN_FAMILY, build_world, encode_world
from gendet.config import to_dict
from gendet.data.manipulations import GENERATED_KINDS
from gendet.encoders.tokens import TOKEN_DIM
from gendet.eval import metrics, tables
from gendet.eval.pixel import pixel_metrics
from gendet.features.sources import TensorSource
from gendet.method.gamma.config import GammaConfig
from gendet.method.gamma.detector import CAMERA
from gendet.method.gamma.losses import GammaTargets
from gendet.method.gamma.networks import pixel_masks, predict_gamma
from gendet.method.gamma.trainer import gamma_targets as store_targets
from gendet.method.gamma.trainer import train_gamma
from gendet.method.gendet.config import preset
from gendet.method.gendet.trainer import train_all
from pipelines import demo

RESULTS = Path(__file__).resolve().parent / "results"
PARTIAL = "inpaint_f8"
TARGET_FPR = 0.05
MASK_GRID = (0.2, 0.3, 0.4, 0.5)
GAMMA_ARMS = {"gamma": ("full", {}), "gamma -manip": ("whole", {}), "gamma +gen": ("generated", {}),
              "gamma +dice": ("full", {"dice_weight": 1.0}), "gamma +gen +dice": ("generated", {"dice_weight": 1.0}),
              "gamma -reverse": ("full", {"reverse_attention": False}),
              "gamma -seg": ("full", {"seg_heads": False, "reverse_attention": False}),
              "gamma +gen -reverse": ("generated", {"reverse_attention": False}),
              "gamma +gen -seg": ("generated", {"seg_heads": False, "reverse_attention": False})}
LADDER_ARMS = {"gendet": "whole", "gendet +manip": "full", "gendet +gen": "generated"}  # each also gives its linear probe
ARMS = (*GAMMA_ARMS, *LADDER_ARMS)


# --- training sets and the arms ----------------------------------------------------------------------

def training_rows(w: dict[str, np.ndarray], data: str, split: str = "train") -> np.ndarray:
    """Row indices of one arm's training set: fakes (whole, + every manipulation for ``full``, + the
    generated kinds only for ``generated``) and as many reals, the training family's first."""
    in_split = w["split"] == split
    whole = in_split & (w["subset"] == TRAIN_FAMILY) & (w["kind"] == "whole")
    manip = in_split & np.isin(w["kind"], {"full": KINDS, "generated": GENERATED_KINDS, "whole": ()}[data])
    fakes = np.flatnonzero(whole | manip)
    own = np.flatnonzero(in_split & (w["kind"] == "real") & (w["subset"] == TRAIN_FAMILY))
    other = np.flatnonzero(in_split & (w["kind"] == "real") & (w["subset"] != TRAIN_FAMILY))
    reals = np.concatenate([own, other])[:len(fakes)]
    return np.concatenate([reals, fakes])


def gamma_targets(w: dict[str, np.ndarray], rows: np.ndarray) -> GammaTargets:
    """The heads' targets of ``rows`` by the library's rules (``gendet.method.gamma.trainer.gamma_targets``,
    what ``train-gamma`` trains on): the world's arrays as token-store columns."""
    kind = w["kind"][rows]
    columns = SimpleNamespace(family=w["family"][rows], subset=w["subset"][rows], labels=w["y"][rows],
                              manipulation=np.where(np.isin(kind, ("real", "whole")), "", kind),
                              generated_fraction=w["generated"][rows].mean(1), token_mask=w["token_mask"][rows])
    return store_targets(columns, (CAMERA, TRAIN_FAMILY))


def run_gamma(w: dict[str, np.ndarray], data: str, overrides: dict, base: GammaConfig, seed: int) -> tuple[dict, float]:
    rows = training_rows(w, data)
    cfg = GammaConfig(**{**to_dict(base), **overrides, "seed": seed})
    targets = gamma_targets(w, rows)
    t0 = time.perf_counter()
    net, history = train_gamma(torch.from_numpy(w["tokens"][rows].astype(np.float32)), targets.labels,
                               grid=tuple(int(g) for g in w["grid"]), cfg=cfg, token_masks=targets.token_masks,
                               token_sources=targets.token_sources, num_sources=2)
    seconds = time.perf_counter() - t0
    out = predict_gamma(net, torch.from_numpy(w["tokens"].astype(np.float32)))
    pred = {"score": out["score"].numpy().astype(np.float64)}
    if "token_probs" in out:
        pred["token_probs"] = out["token_probs"]
    pred["threshold"] = cfg.mask_threshold
    pred["final_loss"] = history[-1]
    return pred, seconds


def run_ladder(w: dict[str, np.ndarray], data: str, seed: int, preset_name: str) -> tuple[dict[str, dict], float]:
    rows = training_rows(w, data)
    cfg = preset(preset_name, seed=seed, train_subsets=(TRAIN_FAMILY,), methods=("linear_probe", "gendet"))
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    result = train_all(cfg, TensorSource(w["pooled"][rows], w["y"][rows], batch_size=cfg.batch_size, seed=seed))
    seconds = time.perf_counter() - t0
    return {m: {"score": det.score(w["pooled"])} for m, det in result.detectors.items()}, seconds


# --- scoring -------------------------------------------------------------------------------------------

def score(w: dict[str, np.ndarray], pred: dict) -> dict:
    """Per test family acc@0.5, acc@cal, AP; pixel F1/IoU of partial fakes (test inpaint_f8, val kinds)."""
    s = pred["score"]
    val_reals = (w["split"] == "val") & (w["kind"] == "real")
    cut = metrics.calibrated_threshold(s[val_reals], TARGET_FPR)
    test = w["split"] == "test"
    report = metrics.metrics_report(s[test], w["y"][test], w["subset"][test], threshold=0.5, calibrated_threshold=cut,
                                    target_fpr=TARGET_FPR, model="", encoder=demo.ENCODER)
    out = {"threshold_cal": cut, "families": {f: {k: m[k] for k in ("acc", "acc_calibrated", "ap", "real_acc", "fake_acc")}
                                              for f, m in report["subsets"].items()}}
    val = (w["split"] == "val") & (w["subset"] == TRAIN_FAMILY) & np.isin(w["kind"], ("real", "whole"))
    out["val_train_family_acc"] = float(((s[val] > 0.5) == w["y"][val].astype(bool)).mean())
    val_manip = (w["split"] == "val") & np.isin(w["kind"], KINDS)
    out["val_manip_fake_acc"] = float((s[val_manip] > 0.5).mean())
    if "token_probs" in pred:
        out["pixel"] = pixel_scores(w, pred, pred["threshold"])
        out["mask_threshold_tuned"], out["pixel_tuned"] = tuned_mask_threshold(w, pred)
    return out


def pixel_scores(w: dict[str, np.ndarray], pred: dict, threshold: float) -> dict:
    """Per family F1/IoU of head 1's masks at ``threshold``: the test partial fakes (+ that family's
    test reals: false pixel rate), the val manipulations per kind and the training family's val reals."""
    grid, size = tuple(int(g) for g in w["grid"]), w["canvas"].shape[1:]
    rows = w["canvas_row"]
    keep = (w["split"][rows] == "test") | ((w["split"][rows] == "val") & np.isin(w["kind"][rows], KINDS))
    rows, truth = rows[keep], w["canvas"][keep]
    names = np.where(w["split"][rows] == "test", w["subset"][rows], np.char.add("val ", w["kind"][rows].astype(str)))
    reals = np.flatnonzero((w["split"] == "test") & (w["subset"] == PARTIAL) & (w["kind"] == "real"))
    val_reals = np.flatnonzero((w["split"] == "val") & (w["subset"] == TRAIN_FAMILY) & (w["kind"] == "real"))
    preds = pixel_masks(pred["token_probs"][np.concatenate([rows, reals, val_reals])], grid, size, threshold)
    truths = [*truth, *np.zeros((len(reals) + len(val_reals), *size), bool)]
    result = pixel_metrics(list(preds), truths, [*names, *[PARTIAL] * len(reals), *["val real"] * len(val_reals)])
    fam = {k: {m: v[m] for m in ("n", "f1", "iou", "real_false_pixel_rate")} for k, v in result["families"].items()}
    whole = (w["split"] == "test") & (w["kind"] == "whole") & (w["subset"] != TRAIN_FAMILY)
    fam["unseen whole fakes"] = {"pred_fraction": float((pred["token_probs"][whole] > threshold).float().mean())}
    return fam


def tuned_mask_threshold(w: dict[str, np.ndarray], pred: dict) -> tuple[float, dict]:
    """The threshold of ``MASK_GRID`` with the best mean val IoU over the generated kinds (inpaint by
    the training family, splice): chosen on training-side val rows only."""
    best = None
    for t in MASK_GRID:
        px = pixel_scores(w, pred, t)
        value = np.mean([px[f"val {k}"]["iou"] for k in ("inpaint", "splice")])
        if best is None or value > best[0]:
            best = (value, t, px)
    return best[1], best[2]


# --- the report ------------------------------------------------------------------------------------------

def _ms(values: list[float], scale: float = 100.0) -> str:
    return tables.mean_sd([x * scale for x in values if x is not None and not np.isnan(x)])


def report(records: list[dict], costs: list[dict], args, w: dict, world_line: str, seconds: float) -> str:
    methods = list(dict.fromkeys(r["method"] for r in records))
    families = sorted(records[0]["families"])
    unseen = [f for f in families if f != TRAIN_FAMILY]
    whole = [f for f in unseen if f != PARTIAL]
    by = {m: [r for r in records if r["method"] == m] for m in methods}

    def col(m: str, f) -> list[float]:
        return [f(r) for r in by[m]]

    head = ["method", f"{PARTIAL} acc", f"{PARTIAL} acc cal", f"{PARTIAL} AP", f"{PARTIAL} mask F1 / IoU @0.5",
            f"{PARTIAL} mask F1 / IoU @val-tuned", "unseen whole acc", "unseen whole acc cal", "unseen whole AP",
            f"{TRAIN_FAMILY} acc (seen)"]
    body = []
    for m in methods:
        px = [f"{_ms(col(m, lambda r, p=p: r[p][PARTIAL]['f1']))} / {_ms(col(m, lambda r, p=p: r[p][PARTIAL]['iou']))}"
              if by[m][0].get(p) else "–" for p in ("pixel", "pixel_tuned")]
        body.append([m, *(_ms(col(m, lambda r, k=k: r["families"][PARTIAL][k])) for k in ("acc", "acc_calibrated", "ap")), *px,
                     *(_ms(col(m, lambda r, k=k: np.mean([r["families"][f][k] for f in whole])))
                       for k in ("acc", "acc_calibrated", "ap")),
                     _ms(col(m, lambda r: r["families"][TRAIN_FAMILY]["acc"]))])
    sections = [f"# GAMMA vs GenDet and GAMMA's ablation, seeds {args.seeds}", world_line,
                "## Headline (test split; mean ± sd over seeds, %)", tables.markdown_table(head, body),
                f"`unseen whole`: mean over the {len(whole)} whole-image families never trained on ({', '.join(whole)}). "
                "`acc cal`: at the threshold giving 5 % FPR on every family's val-split reals. Mask F1 / IoU on the "
                f"{PARTIAL} test fakes at the 256 px token canvas; `@val-tuned`: head 1's threshold chosen per run from "
                f"{list(MASK_GRID)} by the mean val IoU of the training-side inpaint and splice manipulations."]
    for metric, label in (("acc", "accuracy at 0.5"), ("acc_calibrated", "accuracy at the val-reals threshold (5 % FPR)"),
                          ("ap", "AP")):
        rows = [[m, *(_ms(col(m, lambda r, f=f, k=metric: r["families"][f][k])) for f in families)] for m in methods]
        sections += [f"## Per family, {label}", tables.markdown_table(["method", *families], rows)]
    pix = [m for m in methods if by[m][0].get("pixel")]
    for part, label in (("pixel", "at 0.5"), ("pixel_tuned", "at the val-tuned threshold")):
        if not pix:
            break
        names = [k for k in by[pix[0]][0][part] if k not in ("unseen whole fakes", "val real")]
        rows = [[m, *(f"{_ms(col(m, lambda r, k=k, p=part: r[p][k]['f1']))} / "
                      f"{_ms(col(m, lambda r, k=k, p=part: r[p][k]['iou']))}" for k in names),
                 *(_ms(col(m, lambda r, k=k, p=part: r[p][k]["real_false_pixel_rate"])) for k in (PARTIAL, "val real")),
                 _ms(col(m, lambda r, p=part: r[p]["unseen whole fakes"]["pred_fraction"])),
                 _ms(col(m, lambda r, p=part: r.get("mask_threshold_tuned", 0.5) if p == "pixel_tuned" else 0.5))]
                for m in pix]
        columns = ["method", *names, f"{PARTIAL} test reals: false pixel rate", "val reals: false pixel rate",
                   "unseen whole fakes: predicted fraction", "threshold (%)"]
        sections += [f"## Pixel F1 / IoU of head 1's masks {label} (%, 256 px token canvas; `val <kind>`: training-side "
                     "manipulations of val photos, seen kinds)", tables.markdown_table(columns, rows)]
    cost_rows = []
    for arm in dict.fromkeys(c["arm"] for c in costs):
        cs = [c for c in costs if c["arm"] == arm]
        cost_rows.append([arm, str(cs[0]["rows"]), tables.mean_sd([c["seconds"] for c in cs]),
                          ", ".join(f"{c['load_avg_1min']:.1f}" for c in cs)])
    sections += ["## Training cost (seconds per run, this machine, same run)",
                 tables.markdown_table(["arm", "training rows", "seconds (mean ± sd over seeds)",
                                        "1-min load average after each run"], cost_rows),
                 "Seconds: wall time of the training call alone (`train_gamma`; `train_all` with the linear probe and GenDet, "
                 "its teacher included), single-threaded, measured when the run was made (finished runs are kept under "
                 f"`--cache` and reused). GenDet's rows are pooled {w['pooled'].shape[1]}-d vectors; GAMMA's are "
                 f"{w['tokens'].shape[1]} tokens x {w['tokens'].shape[2]}.",
                 f"Encoding once (features + tokens + token masks, {len(w['y'])} images): {float(w['encode_seconds']):.0f} s; "
                 f"this invocation {seconds:.0f} s."]
    return "\n\n".join(sections) + "\n"


def run_folder(args, base: GammaConfig) -> str:
    """Where finished runs are kept (one JSON per arm and seed), keyed by everything that shapes them:
    a rerun, or a second process given other seeds, reuses them."""
    key = json.dumps([to_dict(base), args.preset, args.cache, TOKEN_DIM] + ([args.per_image] if args.per_image != 1 else []),
                     sort_keys=True)
    folder = os.path.join(args.cache, "runs", hashlib.sha256(key.encode()).hexdigest()[:10])
    os.makedirs(folder, exist_ok=True)
    Path(folder, "config.json").write_text(key)
    return folder


def one_run(w: dict[str, np.ndarray], arm: str, seed: int, base: GammaConfig, preset_name: str, runs: str) -> dict:
    path = Path(runs, f"{arm.replace(' ', '_')}-seed{seed}.json")
    if path.exists():
        return json.loads(path.read_text())
    if arm in GAMMA_ARMS:
        data, overrides = GAMMA_ARMS[arm]
        pred, sec = run_gamma(w, data, overrides, base, seed)
        preds = {arm: pred}
    else:
        data = LADDER_ARMS[arm]
        ladder, sec = run_ladder(w, data, seed, preset_name)
        suffix = arm.removeprefix("gendet")
        preds = {f"gendet{suffix}": ladder["gendet"], f"linear_probe{suffix}": ladder["linear_probe"]}
    got = {"cost": {"arm": arm, "seed": seed, "seconds": sec, "rows": int(len(training_rows(w, data))),
                    "load_avg_1min": os.getloadavg()[0]},
           "records": [{"method": method, "seed": seed, **score(w, pr)} for method, pr in preds.items()]}
    if arm in GAMMA_ARMS:
        got["records"][0]["final_losses"] = preds[arm]["final_loss"]
    r = got["records"][0]
    print(f"  seed {seed} {arm}: {sec:.0f} s, {PARTIAL} acc {r['families'][PARTIAL]['acc']:.3f}"
          + (f" IoU {r['pixel'][PARTIAL]['iou']:.3f}" if "pixel" in r else "")
          + f", val manip caught {r['val_manip_fake_acc']:.3f}", flush=True)
    path.write_text(json.dumps(metrics.json_safe(got)))
    return got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default="/work/bench-cache/gamma", help="world, manipulations and encoded arrays (reused)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seg-weight", type=float, default=2.0, help="head 1's loss weight (GammaConfig.seg_weight)")
    p.add_argument("--mask-threshold", type=float, default=0.5, help="head 1's pixel threshold (tuned on val manipulations)")
    p.add_argument("--dice-weight", type=float, default=0.0,
                   help="GammaConfig.dice_weight of every GAMMA arm (0: BCE alone; the `+dice` arms set 1)")
    p.add_argument("--seg-context", type=int, default=0, help="GammaConfig.seg_context of every GAMMA arm")
    p.add_argument("--per-image", type=int, default=1,
                   help="manipulations drawn per training-side real (ManipulateConfig.per_image; its own world)")
    p.add_argument("--preset", default="demo", help="GenDet's TrainConfig preset (the demo's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="", help="appended to the result files' names")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    zoo, manip = build_world(args.cache, args.per_image)
    w = encode_world(args.cache, zoo, manip, args.per_image)
    base = GammaConfig(width=args.width, layers=args.layers, heads=4, epochs=args.epochs, lr=args.lr,
                       seg_weight=args.seg_weight, mask_threshold=args.mask_threshold,
                       dice_weight=args.dice_weight, seg_context=args.seg_context)
    runs = run_folder(args, base)
    records, costs = [], []
    for seed in args.seeds:
        for arm in args.arms:
            got = one_run(w, arm, seed, base, args.preset, runs)
            costs.append(got["cost"])
            records += got["records"]
    counts = {k: int(v) for k, v in manip["counts"].items()}
    world_line = (f"`python -m experiments.gamma_ablation {' '.join(sys.argv[1:])}` on {os.cpu_count()} cores (shared with other "
                  f"agents, nice 10, torch threads {torch.get_num_threads()}), torch {torch.__version__}, "
                  f"{time.strftime('%Y-%m-%d')}. World: the demo's ({zoo['photos']} photos: {zoo['corpus']['found']}; crops of "
                  f"64/128/256 px, half of each label JPEG), every zoo family; encoder {demo.ENCODER} (tokens "
                  f"{int(w['grid'][0])}x{int(w['grid'][1])}x{w['tokens'].shape[2]}, pooled {w['pooled'].shape[1]}-d). "
                  f"Trained on {TRAIN_FAMILY} (train split) + manipulations of its train/val reals, "
                  f"{args.per_image} per real, {counts} "
                  f"(inpaint by {TRAIN_FAMILY}'s generator); {PARTIAL} test fakes and masks: the zoo's shards (mask.png). "
                  f"GAMMA: width {args.width}, {args.layers} layers, 4 heads, {args.epochs} epochs, lr {args.lr}, batch 64, "
                  f"seg weight {args.seg_weight}, dice weight {args.dice_weight}, seg context {args.seg_context}, "
                  "source weight 0.5, "
                  f"mask threshold {args.mask_threshold}. "
                  f"GenDet and the probe: preset `{args.preset}`, no Platt scaling. Test rows per family: "
                  f"{int(((w['split'] == 'test') & (w['subset'] == PARTIAL) & (w['y'] == 1)).sum())} fakes and as many reals.")
    text = report(records, costs, args, w, world_line, time.perf_counter() - started)
    name = f"gamma-ablation-cpu{os.cpu_count()}{'-' + args.tag if args.tag else ''}"
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(metrics.json_safe({"records": records, "costs": costs, "args": vars(args)}),
                                                 indent=1))
    print(text)
    print("wrote", RESULTS / f"{name}.md")


if __name__ == "__main__":
    main()
