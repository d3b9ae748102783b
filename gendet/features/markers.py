"""A variant folder's done markers: each shard's stats file, what makes one valid, and what is
missing or damaged beside them (CONTRACTS.md, the feature store). A shard counts as finished only
through a valid marker whose files are all there at the sizes it recorded."""

from __future__ import annotations

from typing import Any

from gendet import io as gio

MANIFEST = "manifest.json"
STATS_SUFFIX = ".stats.json"
QUARANTINE_SUFFIX = ".quarantine.parquet"
PARQUET_SUFFIX = ".parquet"


STATS_FIELDS = {"shard": str, "files": dict, "written": int, "read": int, "quarantined": int}


def stats_problem(stats: Any, stem: str) -> str | None:
    """What is wrong with a shard's stats file (not an object, a field missing or of the wrong type,
    counts that do not add up), or None. A marker that fails this marks nothing done."""
    if not isinstance(stats, dict):
        return "not a JSON object"
    for name, kind in STATS_FIELDS.items():
        if name in ("read", "quarantined", "files") and name not in stats:
            continue  # stores written before 0.3 recorded fewer fields
        value = stats.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"field {name!r} is {value!r}, not a {kind.__name__}"
    if stats["shard"] != stem:
        return f"names shard {stats['shard']!r}"
    if stats["written"] < 0 or ("read" in stats and stats["read"] != stats["written"] + stats.get("quarantined", 0)):
        return f"counts do not add up (read {stats.get('read')}, written {stats['written']}, quarantined " \
               f"{stats.get('quarantined')})"
    return None


def _stats_files(variant_url: str) -> dict[str, tuple[str, Any]]:
    """stem -> (url, parsed stats or the exception) of every stats file of a variant."""
    out: dict[str, tuple[str, Any]] = {}
    for url in gio.glob(variant_url, "*" + STATS_SUFFIX):
        try:
            stats: Any = gio.read_json(url)
        except (ValueError, OSError) as exc:  # cut off, not JSON
            stats = exc
        out[gio.basename(url)[: -len(STATS_SUFFIX)]] = (url, stats)
    return out


def done_shards(variant_url: str) -> dict[str, dict]:
    """stem -> stats of every finished shard of a variant (its stats file is the done marker; one
    that does not read or fails ``stats_problem`` marks nothing: the next extraction redoes it)."""
    if not gio.exists(variant_url):
        return {}
    return {stem: stats for stem, (_, stats) in _stats_files(variant_url).items()
            if not isinstance(stats, Exception) and stats_problem(stats, stem) is None}


def missing_markers(variant_url: str, done: dict[str, dict] | None = None) -> dict[str, str]:
    """stem -> what is wrong, for shards the manifest lists as finished whose stats file is gone or
    unreadable now (deleted, cut off, edited): their rows must not silently drop out of a table."""
    done = done_shards(variant_url) if done is None else done
    manifest_url = gio.join(variant_url, MANIFEST)
    try:
        listed = gio.read_json(manifest_url).get("shards", []) if gio.exists(manifest_url) else []
    except (ValueError, OSError, AttributeError):
        listed = []
    found = _stats_files(variant_url)
    problems = {}
    for stem in listed if isinstance(listed, list) else []:
        if stem in done:
            continue
        if stem not in found:
            problems[stem] = f"{stem}{STATS_SUFFIX} is missing"
        else:
            stats = found[stem][1]
            why = f"does not read ({type(stats).__name__})" if isinstance(stats, Exception) else stats_problem(stats, stem)
            problems[stem] = f"{stem}{STATS_SUFFIX} {why}"
    return problems


def damaged_shards(variant_url: str, done: dict[str, dict] | None = None) -> dict[str, str]:
    """stem -> what is wrong, for finished shards whose files are gone or not the size their stats
    file recorded (deleted, cut off by a copy, overwritten). One listing of the folder."""
    done = done_shards(variant_url) if done is None else done
    fs, path = gio.fs_and_path(variant_url)
    try:
        sizes = {gio.basename(e["name"]): int(e.get("size") or 0) for e in fs.ls(path, detail=True)}
    except FileNotFoundError:
        sizes = {}
    problems = {}
    for stem, stats in done.items():
        recorded = stats.get("files", {})
        for kind, suffix in (("parquet", PARQUET_SUFFIX), ("quarantine", QUARANTINE_SUFFIX)):
            name = stem + suffix
            if name not in sizes:
                if kind == "parquet" or kind in recorded:
                    problems[stem] = f"{name} is missing"
            elif kind in recorded and sizes[name] != int(recorded[kind]):
                problems[stem] = f"{name} is {sizes[name]} bytes, {recorded[kind]} were written"
    return problems


def rerun_hint(variant_url: str, stats: dict) -> str:
    """The command that redoes a variant's damaged shards (extract redoes them on any rerun)."""
    shards = str(stats.get("url") or "SHARDS").rsplit("/", 1)[0]
    store = str(variant_url).rstrip("/").rsplit("/", 1)[0]
    flags = f" --encoder {stats['encoder']}" if stats.get("encoder") else ""
    flags += f" --weights {stats['weights']}" if stats.get("weights") else ""
    flags += f" --degrade {stats['degrade']}" if stats.get("degrade") else ""
    flags += f" --feature-dtype {stats['dtype']}" if stats.get("dtype") else ""
    precision = stats.get("precision") or (stats.get("config") or {}).get("precision")
    flags += f" --precision {precision}" if precision and precision != "fp32" else ""
    flags += f" --tokens --token-grid {stats['tokens']}" if stats.get("tokens") else ""
    return f"gendet extract {shards} {store}{flags}"


def _manifest(variant_url: str) -> dict:
    try:
        found = gio.read_json(gio.join(variant_url, MANIFEST))
    except (ValueError, OSError):
        return {}
    return found if isinstance(found, dict) else {}
