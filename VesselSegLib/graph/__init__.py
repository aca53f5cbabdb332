"""Vessel graphs: centreline segments and junctions of a binary segmentation, with lengths and radii in mm.

``extract_vessel_graph`` turns a (Z, Y, X) mask into a :class:`VesselGraph`; ``graph_summary`` gives the
graph counts of the 2PM paper (segments, dangling and short segments, incorrect bifurcations);
``write_graphml`` and ``write_graph_json`` save it.
"""

from __future__ import annotations

from VesselSegLib.graph.extraction import (
    DEFAULT_SHORT_SEGMENT_MM,
    EDGE_KINDS,
    NODE_KINDS,
    VesselGraph,
    extract_vessel_graph,
    graph_summary,
    skeletonize_keeping_components,
    write_graph_json,
    write_graphml,
)

__all__ = [
    "DEFAULT_SHORT_SEGMENT_MM",
    "EDGE_KINDS",
    "NODE_KINDS",
    "VesselGraph",
    "extract_vessel_graph",
    "graph_summary",
    "skeletonize_keeping_components",
    "write_graph_json",
    "write_graphml",
]
