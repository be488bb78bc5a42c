"""The cohort report: votes by study year, scanner vendor and phase mix, for epidemiologists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from renalflow.tasks.report.plots import votes_plot
from renalflow.tasks.report.render import render

# Section title -> the study_votes column (or expression) the votes are grouped by.
QUESTIONS = {
    "Votes by study year": "study_year_month[1:4]",
    "Votes by scanner vendor": "manufacturer",
    "Votes by phase mix": "phases",
}


def cohort_report(results: str, out_dir: Path, as_of: Any = None) -> Path:
    """OUT/cohort.html: votes by study year, scanner vendor and phase mix, and QC flags,
    per model version, from the results table (for epidemiologists)."""
    from renalflow.tasks.query import run_query

    out_dir.mkdir(parents=True, exist_ok=True)
    versions = run_query(
        results,
        "select model_version, any_value(model_profile) as profile, count(*) as studies "
        "from study_votes group by 1 order by 1",
        as_of,
    ).to_pylist()
    sections = []
    for title, column in QUESTIONS.items():
        table = run_query(
            results,
            f"select {column} as grp, model_version, "
            "count(*) filter (where vote = 'benign') as benign, "
            "count(*) filter (where vote = 'malignant') as malignant "
            "from study_votes group by all order by grp, model_version",
            as_of,
        ).to_pandas()
        sections.append(
            {
                "title": title,
                "plot": votes_plot(title, table, several_models=len(versions) > 1),
                "rows": [
                    {
                        "group": r.grp,
                        "model": r.model_version,
                        "benign": r.benign,
                        "malignant": r.malignant,
                        "benign_share": r.benign / max(1, r.benign + r.malignant),
                    }
                    for r in table.itertuples()
                ],
            }
        )
    flags = run_query(
        results,
        "select qc_flags, count(*) as studies from study_votes where qc_flags <> '' "
        "group by 1 order by 2 desc",
        as_of,
    ).to_pylist()
    page = render(
        "cohort.html.j2",
        results=results,
        as_of=as_of,
        versions=versions,
        sections=sections,
        flags=flags,
    )
    path = out_dir / "cohort.html"
    path.write_text(page)
    return path
