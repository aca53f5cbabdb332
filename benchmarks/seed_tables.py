"""The "mean +- sd over seeds" table that the phantom benchmarks (``rose_phantoms.py``, ``sld_phantoms.py``)
print: per method, the mean +- sd of its per-seed means, the differences of some scores to the first method
and which of those exceed the seed spread (|delta| > sd(method) + sd(first)). A method summary is the dict
the scripts' ``aggregate`` builds (``mean`` and ``sd`` per score key, ``seeds``: how many trained seeds, 0
for a deterministic row); what differs between the scripts (number formats, when "+- sd" is shown, extra
columns) is a parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence


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
