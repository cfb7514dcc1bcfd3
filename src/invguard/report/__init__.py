"""Reports rendered from the results JSON alone: JSON, self-contained HTML, JUnit XML, Markdown.

>>> from invguard import report
>>> doc = report.load("reports/audit/results.json")       # doctest: +SKIP
>>> report.write_reports(doc, Path("out"), ["html", "junit"])  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from invguard.report.json import load, validate

FILENAMES = {"json": "results.json", "html": "report.html", "junit": "junit.xml", "markdown": "summary.md"}

__all__ = ["FILENAMES", "load", "validate", "write_report", "write_reports"]


def write_report(results: dict[str, Any], fmt: str, path: Path) -> Path:
    """Write one format of the report to ``path``."""
    from invguard.core.errors import ConfigError

    if fmt == "json":
        from invguard.report import json as j

        return j.write(results, path)
    if fmt == "html":
        from invguard.report import html

        return html.write(results, path)
    if fmt == "junit":
        from invguard.report import junit

        return junit.write(results, path)
    if fmt == "markdown":
        from invguard.report import markdown

        return markdown.write(results, path, report_link=FILENAMES["html"])
    raise ConfigError(f"unknown report format {fmt!r}; expected one of {sorted(FILENAMES)}")


def write_reports(results: dict[str, Any], out_dir: Path, formats: list[str]) -> dict[str, Path]:
    """Write each format under ``out_dir`` (results.json, report.html, junit.xml, summary.md)."""
    out_dir = Path(out_dir)
    order = ["json", *[f for f in formats if f != "json"]] if "json" in formats else list(formats)
    return {f: write_report(results, f, out_dir / FILENAMES[f]) for f in order}
