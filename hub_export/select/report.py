"""``concat-embed select``'s Python API and its report: the table, the Pareto front (PNG), the JSON record and the
build of the recommended combination."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hub_export.select.candidates import load_candidate
from hub_export.select.devset import load_devset
from hub_export.select.scoring import Row, Scorer, combinations, pareto, recommend

WEIGHT_MODES = ("auto", "equal")
SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")  # as part names (they become folder names when built)


@dataclass
class SelectOptions:
    """What ``select`` was asked for: the dev data (one of sts / beir / corpus) and the search."""

    sts: str | None = None
    beir: str | None = None
    corpus: str | None = None
    limit: int | None = None
    max_parts: int | None = None  # None: 3, or fewer when there are fewer candidates
    weights: str = "auto"
    holdout: float = 0.5
    seed: int = 0
    cache: str | None = None
    reference: str = "source"  # corpus: each sentence's own document, or "concat" (the candidates' consensus)


def check_candidates(parts: list[tuple[str, str]], max_parts: int, weights: str) -> None:
    """Refuse one candidate, duplicate or unsafe names, a ``max_parts`` out of range or an unknown weight mode.

    Raises:
        ValueError: Naming the option and the valid values.
    """
    names = [name for name, _ in parts]
    if len(parts) < 2:
        raise ValueError(f"select needs at least 2 candidates, got {len(parts)}")
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    if bad := [name for name in names if not SAFE.fullmatch(name)]:
        raise ValueError(f"candidate name {bad[0]!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.'")
    if isinstance(max_parts, bool) or not isinstance(max_parts, int) or not 1 <= max_parts <= len(parts):
        raise ValueError(f"max_parts = {max_parts!r}: expected an integer in [1, {len(parts)}] (the candidates)")
    if weights not in WEIGHT_MODES:
        raise ValueError(f"weights = {weights!r}: expected one of {list(WEIGHT_MODES)}")


def select_parts(parts: list[tuple[str, str]], options: SelectOptions, progress: bool = False) -> dict[str, Any]:
    """Score candidate parts alone and combined on dev data, and recommend a combination with its weights.

    Args:
        parts: ``(name, source)`` per candidate: a local folder or a Hub id ``org/name[@revision]``.
        options: The dev data and the search.
        progress: Progress bars while candidates encode.

    Returns:
        ``{"data", "candidates", "rows", "pareto", "recommended", "reference"}`` (rows as dicts).
    """
    max_parts = min(3, len(parts)) if options.max_parts is None else options.max_parts
    check_candidates(parts, max_parts, options.weights)
    devset = load_devset(
        options.sts, options.beir, options.corpus, options.limit, options.holdout, options.seed, options.reference
    )
    cache = Path(options.cache).expanduser() if options.cache else None
    candidates = [load_candidate(name, source, devset, cache, progress) for name, source in parts]
    scorer = Scorer(devset, candidates)
    rows = combinations(scorer, max_parts, options.weights == "auto")
    best = recommend(rows)
    metric = "STS Spearman" if devset.kind == "sts" else "nDCG@10"
    return {
        "data": {
            "kind": devset.kind,
            "name": devset.name,
            "metric": metric,
            "choose": len(devset.choose),
            "held_out": len(devset.held_out),
            "holdout": options.holdout,
            "seed": options.seed,
        },  # fmt: skip
        "candidates": [
            {
                "name": c.name,
                "source": c.source,
                "dims": c.dims,
                "parameters": c.parameters,
                "ms_per_text": c.ms_per_text,
            }  # fmt: skip
            for c in candidates
        ],
        "rows": [asdict(row) | {"label": row.label} for row in rows],
        "pareto": [row.label for row in pareto(rows)],
        "recommended": asdict(best) | {"label": best.label},
        "reference": list(scorer.reference) or None,
    }


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(result: dict[str, Any]) -> str:
    """The table (best first on the choosing half) and the recommendation line."""
    data = result["data"]
    rows = sorted(result["rows"], key=lambda row: -row["choose"])
    lines = [
        f"{data['name']} ({data['kind']}): {data['metric']} x 100 on {data['choose']} choosing and "
        f"{data['held_out']} held-out {'pairs' if data['kind'] == 'sts' else 'queries'}"
        + (f"; reference ranking: {' + '.join(result['reference'])}" if result["reference"] else ""),
        f"{'combination':<44} {'dims':>5} {'params':>8} {'ms/text':>8} {'choose':>7} {'held-out':>8} "
        f"{'CKA':>5} {'J@10':>5}",
    ]
    for row in rows:
        lines.append(
            f"{row['label'][:44]:<44} {row['dims']:>5} {row['parameters'] / 1e6:>7.1f}M {row['ms_per_text']:>8.2f} "
            f"{row['choose']:>7.2f} {row['held_out']:>8.2f} {_cell(row['cka'], '.2f'):>5} "
            f"{_cell(row['jaccard'], '.2f'):>5}"
        )
    best = result["recommended"]
    singles = [row for row in result["rows"] if len(row["parts"]) == 1]
    top_single = max(singles, key=lambda row: row["choose"])
    lines.append(
        f"recommended: {best['label']} ({best['dims']} dims, {best['ms_per_text']:.2f} ms/text): held-out "
        f"{best['held_out']:.2f} vs {top_single['held_out']:.2f} for the best single model ({top_single['label']})"
    )
    return "\n".join(lines)


def write_pareto_png(result: dict[str, Any], path: str | Path) -> Path:
    """Quality (choosing half) against cost (ms per text, marker size by dims), the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    front = sorted((row for row in rows if row["label"] in result["pareto"]), key=lambda row: row["ms_per_text"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["ms_per_text"] for r in rows], [r["choose"] for r in rows], s=[8 + r["dims"] / 20 for r in rows],
               alpha=0.6, label="combinations")  # fmt: skip
    ax.plot([r["ms_per_text"] for r in front], [r["choose"] for r in front], "r-o", label="Pareto front")
    for row in front:
        ax.annotate(
            row["label"], (row["ms_per_text"], row["choose"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xlabel("encoding cost (ms per text, parts together)")
    ax.set_ylabel(f"{result['data']['metric']} x 100 (choosing half)")
    ax.set_title(f"select on {result['data']['name']}: quality against cost")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def build_recommended(result: dict[str, Any], parts: list[tuple[str, str]], output: str | Path) -> Path:
    """Build the recommended combination with its weights (``build``'s output-folder rules apply).

    Raises:
        ValueError: If the recommendation is a single model (nothing to combine).
    """
    from hub_export.publish.build import PartOptions, build_model

    best = result["recommended"]
    if len(best["parts"]) < 2:
        raise ValueError(f"the recommendation is one model ({best['label']}): nothing to combine; use it as it is")
    sources = dict(parts)
    chosen = [PartOptions(name, sources[name], weight=weight) for name, weight in zip(best["parts"], best["weights"])]
    return build_model(chosen, output)


__all__ = ["Row", "SelectOptions", "build_recommended", "format_report", "select_parts", "write_pareto_png"]
