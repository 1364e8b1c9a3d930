"""Choosing the parts of a combined model and their weights from data (``concat-embed select``).

Each candidate encodes the dev data once; every combination and weight is then scored from the cached
similarities (the cosine of combined vectors is the weighted sum of the parts' cosines), on a choosing half and
a held-out half. :func:`select_parts` is the API behind the command.
"""

from hub_export.select.report import SelectOptions, build_recommended, format_report, select_parts, write_pareto_png

__all__ = ["SelectOptions", "build_recommended", "format_report", "select_parts", "write_pareto_png"]
