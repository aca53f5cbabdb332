"""The "mean +- sd over seeds" table that the phantom benchmarks (``rose_phantoms.py``, ``sld_phantoms.py``)
print: per method, the mean +- sd of its per-seed means, the differences of some scores to the first method
and which of those exceed the seed spread (|delta| > sd(method) + sd(first)). A method summary is the dict
the scripts' ``aggregate`` builds (``mean`` and ``sd`` per score key, ``seeds``: how many trained seeds, 0
for a deterministic row); what differs between the scripts (number formats, when "+- sd" is shown, extra
columns) is a parameter. :func:`aggregate_over_seeds` builds those summaries from the per-phantom rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import numpy as np


def seed_table_header(
    first: str,
    keys: Sequence[str],
    delta_keys: Sequence[str],
    headers: Mapping[str, str],
    extra: Sequence[str],
) -> list[str]:
    """The lines that open the table (a blank line first), ``extra`` the column titles after "beyond seed
    spread"."""
    titles = [headers[k] for k in keys] + [f"delta {headers[k]}" for k in delta_keys]
    titles += ["beyond seed spread", *extra]
    return [
        "",
        f"Mean +- sd over seeds (of the per-seed means); differences to {first}:",
        "",
        "| method | seeds | " + " | ".join(titles) + " |",
        "| --- | --- | " + " | ".join("---" for _ in titles) + " |",
    ]


def seed_comparison_cells(
    summary: dict,
    reference: dict | None,
    keys: Sequence[str],
    delta_keys: Sequence[str],
    headers: Mapping[str, str],
    fmt: Callable[[float, str], str],
    *,
    two_decimal_keys: Collection[str],
    min_seeds: int,
) -> tuple[list[str], list[str], str]:
    """One method's ``(cells, deltas, verdict)``: ``cells`` the mean of every score in ``keys``, with
    "+- sd" where mean and sd are finite and the method has ``min_seeds`` seeds or more (``fmt(value, key)``
    formats both); ``deltas`` its mean minus ``reference``'s for ``delta_keys`` (signed, two decimals for
    ``two_decimal_keys``, else three; "n/a" where not finite); ``verdict`` the ``headers`` of the deltas beyond
    the seed spread, "none", "n/a (one seed)" where a spread is not finite, or "(reference)" when
    ``reference`` is None (this is the first method, or there is none) and ``deltas`` are empty.
    """
    cells = []
    for key in keys:
        mean, sd = summary["mean"][key], summary["sd"][key]
        if math.isfinite(mean) and math.isfinite(sd) and summary["seeds"] >= min_seeds:
            cells.append(f"{fmt(mean, key)} +- {fmt(sd, key)}")
        else:
            cells.append(fmt(mean, key))
    if reference is None:
        return cells, [""] * len(delta_keys), "(reference)"
    deltas, beyond, unjudged = [], [], False
    for key in delta_keys:
        delta = summary["mean"][key] - reference["mean"][key]
        if not math.isfinite(delta):
            deltas.append("n/a")
            continue
        deltas.append(f"{delta:+.2f}" if key in two_decimal_keys else f"{delta:+.3f}")
        spread = summary["sd"][key] + reference["sd"][key]
        if not math.isfinite(spread):
            unjudged = True
        elif abs(delta) > spread:
            beyond.append(headers[key])
    verdict = ", ".join(beyond) if beyond else "n/a (one seed)" if unjudged else "none"
    return cells, deltas, verdict


def aggregate_over_seeds(
    rows: Sequence[Mapping],
    score_keys: Sequence[str],
    *,
    untrained_kinds: Collection[str],
    keep_infinite: bool,
    per_seed_fields: Sequence[str] = (),
) -> dict[str, dict]:
    """Per method (in row order): per-seed means over the phantoms, then mean and sd over the seeds.

    ``rows`` carry ``method``, ``kind``, ``seed``, ``train_s`` and the ``score_keys``. Missing values (None,
    NaN) are left out of every mean; ``keep_infinite`` keeps infinite ones (an empty prediction's HD95 stays
    visible as inf) instead of leaving them out too. The sd over seeds is NaN unless there are two finite
    per-seed values; rows of an ``untrained_kinds`` kind are deterministic: sd 0 and ``seeds`` 0.
    ``per_seed_fields`` are copied per seed from its first row (e.g. ``best_epoch``).
    """

    def mean(values: Iterable, keep_infinite: bool = keep_infinite) -> float:
        values = np.asarray([v for v in values if v is not None], dtype=float)
        values = values[~np.isnan(values)] if keep_infinite else values[np.isfinite(values)]
        return float(values.mean()) if len(values) else math.nan

    methods: dict[str, dict] = {}
    for row in rows:
        methods.setdefault(row["method"], {"kind": row["kind"], "rows": []})["rows"].append(row)
    for summary in methods.values():
        seeds = sorted({r["seed"] for r in summary["rows"]}, key=lambda s: (s is None, s))
        per_seed = {}
        for seed in seeds:
            chosen = [r for r in summary["rows"] if r["seed"] == seed]
            per_seed[seed] = {k: mean(r[k] for r in chosen) for k in score_keys}
            per_seed[seed]["train_s"] = mean((r["train_s"] for r in chosen), keep_infinite=False)
            per_seed[seed]["phantoms"] = len(chosen)
            per_seed[seed].update({field: chosen[0].get(field) for field in per_seed_fields})
        summary["per_seed"] = per_seed
        trained = summary["kind"] not in untrained_kinds
        summary["mean"], summary["sd"] = {}, {}
        for key in (*score_keys, "train_s"):
            values = np.asarray([per_seed[s][key] for s in seeds], dtype=float)
            values = values[~np.isnan(values)] if keep_infinite else values[np.isfinite(values)]
            summary["mean"][key] = float(values.mean()) if len(values) else math.nan
            if not trained:
                summary["sd"][key] = 0.0  # deterministic: no seed to vary
            elif len(values) > 1 and np.isfinite(values).all():
                summary["sd"][key] = float(values.std(ddof=1))
            else:
                summary["sd"][key] = math.nan
        summary["seeds"] = len(seeds) if trained else 0
    return methods
