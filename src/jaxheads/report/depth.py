"""The depth question's price: what the backbone costs cut at each level the sweep compared (the job measures it,
:func:`jaxheads.backbones.cut.cut_cost`, into ``provenance.cut_costs``), so "cut at block k" is read beside what
the cut saves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def cut_cost_table(result_json: Mapping[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of the cut backbones, shallowest first (the whole one last); None when the sweep cut
    nothing."""
    costs = (result_json.get("provenance") or {}).get("cut_costs")
    if not costs:
        return None
    whole = costs.get("last") or next(iter(costs.values()))
    rows = []
    for level, c in sorted(costs.items(), key=lambda item: item[1]["params"]):
        rows.append([level if level != "last" else "last (whole backbone)", f"{c['params'] / 1e6:.2f} M",
                     f"{c['params'] / whole['params']:.0%}", f"{c['flops_per_image'] / 1e9:.3f}",
                     f"{c['flops_per_image'] / whole['flops_per_image']:.0%}", f"{c['images_per_s']:.1f}"])
    header = ["cut after", "params", "of whole", "GFLOP/image", "of whole", "images/s here"]
    return header, rows
