"""Wire models of the saved evaluation reports (``GET /v1/eval/reports``), converted at the edge."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from verity.core.reports import REPORT_NAME, ReportInfo

REPORT_NAME_PATTERN = f"^{REPORT_NAME.pattern}$"


class ReportModel(BaseModel):
    name: str = Field(description="the report's path under the reports folder, without .json; "
                                  "pass it to GET /v1/eval/reports/{name} and /v1/eval/compare")
    kind: Literal["retrieval", "qa"]
    dataset: str
    created_utc: str | None = Field(description="when the run was made (or its file was written)")
    git_commit: str | None = None
    metrics: dict[str, dict[str, float]] = Field(
        description="headline numbers per configuration (retrieval mode or QA config)")

    @classmethod
    def of(cls, info: ReportInfo) -> ReportModel:
        return cls(name=info.name, kind=info.kind, dataset=info.dataset,
                   created_utc=info.created_utc, git_commit=info.git_commit, metrics=info.metrics)


class ReportList(BaseModel):
    reports: list[ReportModel] = Field(description="newest first")
