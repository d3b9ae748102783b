"""A Markdown report: ``## heading`` sections holding the tables of ``gendet.eval.tables`` and
links to the plots of ``gendet.eval.plots`` (no Ray, no MLflow). ``write_demo_report`` is the one
``gendet demo`` writes."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from gendet import io as gio
from gendet.eval import tables
from gendet.eval.paired import in_points


def markdown(sections: Sequence[tuple[str, str]], title: str = "gendet demo report") -> str:
    """``# title`` then ``## heading`` + body for each section."""
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.rstrip(), ""]
    return "\n".join(parts)


def write(url: str, sections: Sequence[tuple[str, str]], title: str = "gendet demo report") -> str:
    gio.write_bytes_atomic(url, markdown(sections, title).encode("utf-8"))
    return url


def plot_links(paths: Sequence[str], out: str) -> str:
    """Markdown image links to the PNGs a training run saved (its summary's ``plots``: accuracy
    bars, discrepancy histograms, ``training_diagnostics.png``), relative to the report's folder."""
    return "\n".join(f"![{os.path.basename(p)}]({os.path.relpath(p, out)})" for p in paths)


OVERLAY_HEADING = "Where the model says it is fake"


def overlay_section(png: str, out: str, note: str = "") -> tuple[str, str]:
    """The section "Where the model says it is fake": an overlay grid PNG (``gendet.eval.overlays.overlay_grid``
    saved with ``gendet.eval.plots.save_png``) linked relative to the report's folder ``out``, then ``note``."""
    body = f"![{os.path.basename(png)}]({os.path.relpath(png, out)})"
    return OVERLAY_HEADING, body + (f"\n\n{note}" if note else "")


@dataclass(frozen=True, kw_only=True)
class DemoReport:
    """What ``gendet demo`` gathered on its way: the inputs of its report."""

    train_family: str
    new_family: str
    zoo: dict
    """The zoo's shard summary (photos, per-family counts)."""
    extracted: dict
    """Extraction summary per degradation ('' = clean)."""
    summary: dict
    """The training run's summary (run id, model URI, plots, gate decision)."""
    by_degrade: dict
    """metrics.json per method, per degradation (Table 4)."""
    predictions: list
    predictions_model: str
    refresh: dict
    times: dict
    degrade_note: str = ""
    """What the degradations of Table 4 mean for this world (the demo's crop sizes)."""
    overlays: str = ""
    """A GAMMA overlay grid PNG (``overlay_section``); empty: no such section."""
    overlays_note: str = ""
    """Under the overlay grid: which model, which images."""
    seen_generator: tuple[str, ...] = ()
    """Subsets made by the training family's generator another way (``inpaint_f8``: its weights inside
    a mask): marked in the tables and left out of every unseen mean."""
    gamma: dict = field(default_factory=dict)
    """The demo's GAMMA step (``pipelines.demo_gamma.run_gamma``): its ``metrics`` (metrics.json), training
    ``summary``, ``train_subsets``, ``manipulated`` counts, ``token_grid``; empty: no GAMMA sections."""


def _sources(zoo: dict) -> str:
    return ", ".join(f"{name} {n}" for name, n in zoo.get("corpus", {}).get("found", {}).items())


def _world(zoo: dict) -> str:
    """Crop sizes and formats of the zoo's config, as the summary recorded them."""
    cfg = zoo.get("config", {})
    sizes = cfg.get("crop_sizes") or [cfg.get("crop_size")]
    jpeg = cfg.get("jpeg_fraction", 0.0)
    quality = cfg.get("jpeg_quality", [])
    formats = f"{jpeg:.0%} of each label's images JPEG (q {'-'.join(map(str, quality))}), the rest PNG" if jpeg else "PNG"
    return f"native crops of {', '.join(map(str, sizes))} px, {formats}"


def _fix_text(fix: dict | None) -> str:
    """The closed loop's outcome under the refresh verdict: the gate's decision, what it saw on its
    split (every family before/after, the paired interval), then the challenger on the reported split."""
    if not fix:
        return ""

    rows = [[s, str((row.get("paired") or {}).get("n", "")), tables.pct((row.get("before") or {}).get("acc_calibrated")),
             tables.pct(row["after"]["acc_calibrated"]), in_points(row.get("paired")),
             tables.pct((row.get("before") or {}).get("fake_acc_calibrated")), tables.pct(row["after"]["fake_acc_calibrated"])]
            for s, row in fix.get("families", {}).items() if row.get("after")]
    split, reported = fix.get("gate_split") or "val", fix.get("reported") or {}
    text = (f"\n\n**Fix** (`refresh --fix`, {fix.get('shots')} shots of {', '.join(fix.get('subsets', []))}): version "
            f"{fix.get('challenger_version')} {'promoted to champion' if fix.get('promoted') else 'not promoted'}: "
            f"{fix.get('reason')} ({fix.get('seconds', 0):.0f} s)\n\n"
            f"What the gate saw, on {split} (both models on the same images, each at its calibrated threshold; "
            "the interval is the paired bootstrap's, simultaneous over the families):\n\n"
            + tables.markdown_table(["subset", "images", "acc_cal before", "acc_cal after", "after - before [interval], points",
                                     "fakes caught before", "fakes caught after"], rows))
    if reported:
        new = [s for s in fix.get("subsets", []) if s in reported]
        others = tables.mean_over({"subsets": reported}, [s for s in reported if s not in new], "acc_calibrated")
        text += (f"\n\nReported on {','.join(fix.get('eval_splits') or ['test'])} (never read by the gate), the "
                 "challenger: " + "; ".join(f"{s} {tables.pct(reported[s].get('fake_acc_calibrated'))} of fakes caught, "
                                             f"acc_cal {tables.pct(reported[s].get('acc_calibrated'))}" for s in new)
                 + f"; mean acc_cal of the other families {tables.pct(others)}.")
    return text


def gamma_sections(gamma: dict, gendet: dict, seen: list[str], seen_generator: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """GAMMA beside GenDet on GenDet's subsets (the headline's format), then the partial fakes (subsets
    with masks: the zoo's inpaint_f8, the training family's test manipulations): fakes caught, pixel F1/IoU."""
    if not gamma:
        return []
    metrics, summary, gate = gamma["metrics"], gamma["summary"], gamma["summary"].get("gate", {})
    shared = {**metrics, "subsets": {s: v for s, v in metrics["subsets"].items() if s in gendet["subsets"]}}
    both = {"gendet": gendet, "gamma": shared}
    masked = sorted((s for s, v in metrics["subsets"].items() if v.get("n_masked")),
                    key=lambda s: (s not in gendet["subsets"], s))
    body = [f"GAMMA trained on {', '.join(f'`{s}`' for s in gamma['train_subsets'])} (train split; "
            f"{gamma['token_grid']} tokens of the same encoder; manipulations written: `{json.dumps(gamma['manipulated'])}`). "
            "Test split, %.", "**Accuracy at 0.5**",
            tables.methods_table(both, seen, metric="acc", seen_generator=seen_generator),
            "**Average precision**", tables.methods_table(both, seen, metric="ap", seen_generator=seen_generator),
            "**Accuracy at the calibrated threshold**",
            tables.methods_table(both, seen, metric="acc_calibrated", seen_generator=seen_generator)]
    if masked:  # partial fakes: the training family's test manipulations (seen kinds) and the zoo's inpaint_f8
        rows = [[f"{s} (seen process: the training family's weights, GAMMA's mask drawer)" if s in seen_generator else s,
                 v.get("n_masked"), *(tables.pct(v.get(k)) for k in ("fake_acc", "fake_acc_calibrated", "pixel_f1",
                                                                          "pixel_iou"))]
                for s, v in ((s, metrics["subsets"][s]) for s in masked)]
        body += ["**Partial fakes: where GAMMA says it is fake** (pixel F1/IoU on the token canvas, mean over images)",
                 tables.markdown_table(["subset", "masked images", "fakes caught at 0.5", "at the calibrated threshold",
                                        "pixel F1", "pixel IoU"], rows)]
    body.append(f"MLflow run `{summary.get('run_id')}`; registered as `{gate.get('registered')}` version "
                f"{gate.get('version')}, promoted to champion: **{gate.get('promoted')}** ({gate.get('reason')}). Seconds: "
                + ", ".join(f"{k} {v}" for k, v in gamma.get("seconds", {}).items()) + ".")
    return [("GAMMA beside GenDet: image and pixel level", "\n\n".join(body))]


def write_demo_report(out: str, r: DemoReport) -> tuple[str, str]:
    """OUT/report.md: tables, plots, predictions, the refresh verdict; returns (path, headline table)."""
    seen = [r.train_family]
    reports = {m: gio.read_json(gio.join(out, "metrics", f"{m}.json")) for m in r.by_degrade[""]}
    known = [*seen, *r.seen_generator]
    headline = tables.methods_table(reports, seen, metric="acc", seen_generator=r.seen_generator)
    plots = plot_links(r.summary.get("plots", []), out)
    gate = r.summary.get("gate", {})
    counts = {f: {k: v for k, v in s.items() if k in ("real", "fake", "masked")} for f, s in r.zoo["families"].items()}
    fresh = r.refresh
    extraction = ", ".join(f"{d or 'clean'} {e['store_rows']} rows" + (
        f" ({e['images']} new at {e['images_per_s']:.0f} images/s)" if e["images"] else " (already extracted)")
        for d, e in r.extracted.items())
    sections = [
        (f"Accuracy at 0.5 (GenImage protocol), trained on {r.train_family}", headline),
        ("Average precision", tables.methods_table(reports, seen, metric="ap", seen_generator=r.seen_generator)),
        ("Accuracy at the threshold calibrated on held-out reals "
         f"(target FPR {reports['gendet'].get('target_fpr')})",
         tables.methods_table(reports, seen, metric="acc_calibrated", seen_generator=r.seen_generator)),
        ("Table 4: mean accuracy on unseen families under degradation",
         tables.degradation_by_method(r.by_degrade, known) + (f"\n\n{r.degrade_note}" if r.degrade_note else "")),
        *gamma_sections(r.gamma, reports["gendet"], seen, r.seen_generator),
        ("Plots", plots),
        *([overlay_section(r.overlays, out, r.overlays_note)] if r.overlays else []),
        ("Registry", f"MLflow run `{r.summary['run_id']}`, model `{r.summary['model_uri']}`; registered as "
         f"`gendet` version {gate.get('version')}, promoted to champion: **{gate.get('promoted')}** "
         f"({gate.get('reason')})."),
        (f"predict with {r.predictions_model}", "```\n" + "\n".join(json.dumps(p) for p in r.predictions) + "\n```"),
        (f"Refresh: {r.new_family} arrives", (fresh.get("table") or "nothing new")
         + f"\n\nnew shards: {len(fresh['new_shards'])}; alert: **{fresh['alert']}**\n\n"
         + "\n".join(f"- {s}: {v['reason']}" for s, v in fresh["subsets"].items()) + _fix_text(fresh.get("fix"))),
        ("Data", f"{r.zoo['photos']} photos ({_sources(r.zoo)}), world seed {(r.zoo.get('config') or {}).get('seed', 0)}; "
         f"{_world(r.zoo)}; samples per family: "
         f"`{json.dumps(counts)}`; extraction: {extraction}"),
        ("Timings (s)", "\n".join(f"- {k}: {v}" for k, v in r.times.items())),
    ]
    return write(gio.join(out, "report.md"), sections), headline
