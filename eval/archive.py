"""The folder of saved reports, browsed by the service (``verity serve`` hands it over).

A report is a ``retrieval.json`` or ``qa-<dataset>.json`` that ``verity eval``
wrote, with its HTML page beside it, anywhere up to four folders deep under the
reports folder. Its name is that path without ``.json``
(``scifact-20261205-211200/retrieval``). Names are checked before any file is
touched, and a name that leads out of the folder (``..``, a link elsewhere) is
no report.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

from eval.compare import RunData, RunError, compare_runs, load_run, render_comparison_html
from eval.html import render_html
from verity.core.errors import ConfigError, NotFoundError
from verity.core.reports import REPORT_NAME, ReportInfo, ReportKind, validate_report_name

MAX_DEPTH = 4
HEADLINE = {"retrieval": ("ndcg@10", "recall@100", "map", "mrr@10"),
            "qa": ("accuracy", "f1", "faithfulness", "citation_validity", "abstain_recall")}


def is_report_file(path: Path) -> bool:
    """A report JSON by its name: ``retrieval.json`` or ``qa-*.json``."""
    return path.suffix == ".json" and (path.name == "retrieval.json" or path.name.startswith("qa-"))


class ReportFolder:
    """The reports under ``root``, read-only; satisfies :class:`verity.core.reports.ReportArchive`.

    Example:
        >>> reports = ReportFolder(Path("~/.local/share/verity/reports").expanduser())
        >>> [r.name for r in reports.list_reports()]
        ['scifact-20261205-211200/retrieval']
        >>> page = reports.compare_html("before/qa-popqa", "after/qa-popqa")
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._runs: dict[Path, tuple[int, RunData]] = {}  # path -> (mtime_ns, run)

    def list_reports(self) -> list[ReportInfo]:
        """Every readable report, newest first."""
        found = []
        for path in self._report_files():
            try:
                run = self._run(path)
            except RunError:
                continue  # half-written or not ours: left out of the list
            found.append(self._info(path, run))
        return sorted(found, key=lambda r: (r.created_utc or "", r.name), reverse=True)

    def report_html(self, name: str) -> str:
        """The report's HTML page (rendered from its JSON if the page is missing)."""
        path = self._path(name)
        page = path.with_suffix(".html")
        if page.is_file():
            return page.read_text(encoding="utf-8")
        return render_html(self._load(name, path).data)

    def compare_html(self, a: str, b: str) -> str:
        """What changed from report ``a`` to report ``b``, as an HTML page, differences first."""
        run_a, run_b = self._load(a, self._path(a)), self._load(b, self._path(b))
        try:
            rows = compare_runs(run_a, run_b)
        except RunError as e:  # different kinds, nothing in common: said without paths
            raise ConfigError(f"cannot compare {a} with {b}: {e}") from e
        return render_comparison_html(run_a, run_b, rows, labels=(a, b))

    # --- files ---------------------------------------------------------------------------

    def _report_files(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        files = []
        for depth in range(1, MAX_DEPTH + 1):
            for path in self.root.glob("/".join(["*"] * depth)):
                name = path.relative_to(self.root).with_suffix("").as_posix()
                if is_report_file(path) and REPORT_NAME.fullmatch(name) and self._inside(path):
                    files.append(path)
        return files

    def _inside(self, path: Path) -> bool:
        """``path`` is a file that really lies under the root (a link out of it does not)."""
        try:
            path.resolve().relative_to(self.root.resolve())
        except (OSError, ValueError):
            return False
        return path.is_file()

    def _path(self, name: str) -> Path:
        path = self.root / f"{validate_report_name(name)}.json"
        if not (is_report_file(path) and self._inside(path)):
            raise NotFoundError(f"no report {name!r}; GET /v1/eval/reports lists them")
        return path

    def _load(self, name: str, path: Path) -> RunData:
        try:
            return self._run(path)
        except RunError as e:
            raise NotFoundError(f"report {name!r} cannot be read: it is not a complete report "
                                "JSON written by verity eval") from e

    def _run(self, path: Path) -> RunData:
        """The run at ``path``, read once per change of the file."""
        try:
            mtime = path.stat().st_mtime_ns
        except OSError as e:
            raise RunError(f"{path.name}: cannot be read") from e
        cached = self._runs.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, load_run(path))
            self._runs[path] = cached
        return cached[1]

    def _info(self, path: Path, run: RunData) -> ReportInfo:
        prov = run.data.get("provenance") or {}
        prov = prov if isinstance(prov, dict) else {}
        created = prov.get("created_utc") or datetime.fromtimestamp(
            path.stat().st_mtime, UTC).isoformat(timespec="seconds")
        dataset = run.data.get("dataset") or prov.get("dataset") or ""
        keys = HEADLINE.get(run.kind, ())
        metrics = {config: {k: float(v) for k in keys
                            if isinstance(v := values.get(k), int | float) and math.isfinite(v)}
                   for config, values in run.summary.items()}
        kind: ReportKind = "qa" if run.kind == "qa" else "retrieval"
        return ReportInfo(name=path.relative_to(self.root).with_suffix("").as_posix(), kind=kind,
                          dataset=str(dataset), created_utc=str(created),
                          git_commit=prov.get("git_commit"), metrics=metrics)
