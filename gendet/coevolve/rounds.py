"""What one co-evolution round records (CONTRACTS.md, "Co-evolution round"): per-subset rates of a
detector on scored store rows, the held-out summary, and the round's ``round.json``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from gendet import io as gio

ROUND_FORMAT = 1
ROUND_JSON = "round.json"


def round_dir(out: str, k: int) -> str:
    return gio.join(out, f"round-{k}")


def round_subset(family: str, k: int) -> str:
    """The subset name of round ``k``'s fakes: ``sdedit-r1``."""
    return f"{family}-r{k}"


def subset_rates(scored: Mapping[str, np.ndarray], threshold: float, score_key: str) -> dict[str, dict[str, float]]:
    """{subset: caught (fakes scored above ``threshold``), real_ok (reals at or below it), acc (the
    mean of the two: balanced accuracy at the calibrated threshold), n_real, n_fake}."""
    labels, subsets = np.asarray(scored["label"]), np.asarray(scored["subset"])
    fake = np.isin(labels, ("fake", 1, "1"))
    flagged = np.asarray(scored[score_key]) > threshold
    out = {}
    for subset in sorted(set(subsets.tolist())):
        here = subsets == subset
        f, r = here & fake, here & ~fake
        caught = float(flagged[f].mean()) if f.any() else float("nan")
        real_ok = float((~flagged[r]).mean()) if r.any() else float("nan")
        out[str(subset)] = {"caught": caught, "real_ok": real_ok, "acc": float(np.nanmean([caught, real_ok])),
                            "n_real": int(r.sum()), "n_fake": int(f.sum())}
    return out


def held_out_summary(rates: Mapping[str, Mapping[str, float]], families: Iterable[str]) -> dict[str, Any]:
    """Mean balanced accuracy and mean share caught over ``families`` (those present in ``rates``)."""
    present = [f for f in families if f in rates]
    if not present:
        return {"families": [], "acc": None, "caught": None}
    return {"families": present, "acc": float(np.mean([rates[f]["acc"] for f in present])),
            "caught": float(np.mean([rates[f]["caught"] for f in present]))}


def is_done(out: str, k: int) -> bool:
    return gio.exists(gio.join(round_dir(out, k), ROUND_JSON))


def read_round(out: str, k: int) -> dict[str, Any]:
    return gio.read_json(gio.join(round_dir(out, k), ROUND_JSON))


def write_round(out: str, k: int, record: Mapping[str, Any]) -> str:
    """Write ``round.json`` last: its presence is the round's done marker."""
    url = gio.join(round_dir(out, k), ROUND_JSON)
    gio.write_json_atomic(url, {"format_version": ROUND_FORMAT, "round": k, **record})
    return url
