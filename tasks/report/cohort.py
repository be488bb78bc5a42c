"""The cohort report: votes by study year, scanner vendor and phase mix, and agreement of
the votes with reference outcomes, for epidemiologists.

Votes of patients a model trained or validated on (`in_training`) are left out unless
asked for, and the page says how many: figures on them overstate accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from renalflow.tasks.agreement import FIGURE_NAMES, FIGURES, agreement_by, comparable_rows
from renalflow.tasks.config import InTraining
from renalflow.tasks.report.plots import agreement_plot, votes_plot
from renalflow.tasks.report.render import render
from renalflow.tasks.results import (
    PATIENT_VOTES,
    REFERENCE_OUTCOMES,
    STUDY_VOTES,
    read_pinned,
)

# Section title -> the study_votes column (or expression) the votes are grouped by.
QUESTIONS = {
    "Votes by study year": "study_year_month[1:4]",
    "Votes by scanner vendor": "manufacturer",
    "Votes by phase mix": "phases",
}

COHORT_PAGE = "cohort.html"
AGREEMENT_CSV = "agreement.csv"
"""The files of `renalflow cohort-report` in OUT."""

TRAINED_ON = (InTraining.TRAINING.value, InTraining.VALIDATION.value)
"""Memberships whose votes are left out of the report unless --include-training."""

# Agreement groupings per unit: title -> column of the vote rows (None: all rows). The
# vote rows carry no site: scoring each site as its own cohort makes `cohort` the site.
AGREEMENT_GROUPS: dict[str, dict[str, str | None]] = {
    "patients": {"all": None, "year of first study": "first_year"},
    "studies": {
        "all": None,
        "scanner vendor": "manufacturer",
        "phase mix": "phases",
        "study year": "year",
        "cohort (site)": "cohort",
    },
}


@dataclass(frozen=True)
class CohortReport:
    """Where the page is and what it left out."""

    path: Path
    excluded_studies: int
    excluded_patients: int
    unknown_patients: int
    compared_patients: int


def _membership(table: pa.Table) -> pa.ChunkedArray:
    return pc.fill_null(table.column("in_training"), InTraining.UNKNOWN.value)


def drop_trained_on(tables: dict[str, pa.Table]) -> tuple[dict[str, pa.Table], int, int]:
    """`tables` without the study and patient votes of patients their model trained or
    validated on; and how many study and patient votes were left out."""
    out = dict(tables)
    dropped = {}
    for name in (STUDY_VOTES, PATIENT_VOTES):
        trained = pc.is_in(_membership(tables[name]), pa.array(TRAINED_ON))
        out[name] = tables[name].filter(pc.invert(trained))
        dropped[name] = tables[name].num_rows - out[name].num_rows
    return out, dropped[STUDY_VOTES], dropped[PATIENT_VOTES]


def agreement_rows(tables: dict[str, pa.Table]) -> dict[str, Any]:
    """Per unit (patients, studies): the agreement of each model version's votes with the
    reference outcomes, overall and by group, and the rows that could not be compared."""
    references = tables[REFERENCE_OUTCOMES].to_pandas()
    votes = {
        "patients": tables[PATIENT_VOTES].to_pandas(),
        "studies": tables[STUDY_VOTES].to_pandas(),
    }
    votes["patients"]["first_year"] = votes["patients"]["first_study_year_month"].str[:4]
    votes["studies"]["year"] = votes["studies"]["study_year_month"].str[:4]
    out: dict[str, Any] = {}
    for unit, frame in votes.items():
        rows, left_out = [], []
        for model, by_model in frame.groupby("model_version", sort=True):
            comparable = comparable_rows(by_model, references)
            left_out.append(
                {
                    "model": model,
                    "compared": len(comparable.rows),
                    "no_vote": comparable.no_vote,
                    "no_reference": comparable.no_reference,
                    "conflicting": comparable.conflicting,
                }
            )
            if comparable.rows.empty:
                continue
            for by, column in AGREEMENT_GROUPS[unit].items():
                grouped = (
                    comparable.rows.assign(_all="all")
                    if column is None
                    else comparable.rows.rename(columns={column: "_all"})
                )
                for agreement in agreement_by(grouped, "_all"):
                    rows.append(
                        {
                            "by": by,
                            "group": agreement.group,
                            "model": str(model),
                            "agreement": agreement,
                            "figures": {name: agreement.figure(name) for name in FIGURES},
                            "warnings": agreement.warnings(),
                        }
                    )
        out[unit] = {"rows": rows, "left_out": left_out}
    return out


def cohort_report(
    results: str, out_dir: Path, as_of: Any = None, include_training: bool = False
) -> CohortReport:
    """OUT/cohort.html: votes by study year, scanner vendor and phase mix, QC flags, and
    agreement with the reference outcomes, per model version, from the results table;
    OUT/agreement.csv: the agreement figures with their CIs, for a paper's table."""
    from renalflow.tasks.query import run_query

    out_dir.mkdir(parents=True, exist_ok=True)
    tables = read_pinned(results, as_of).tables
    patients = tables[PATIENT_VOTES]
    unknown = int(pc.sum(pc.equal(_membership(patients), InTraining.UNKNOWN.value)).as_py() or 0)
    excluded_studies = excluded_patients = 0
    if not include_training:
        tables, excluded_studies, excluded_patients = drop_trained_on(tables)

    def query(sql: str) -> pa.Table:
        return run_query(results, sql, tables=tables)

    versions = query(
        "select model_version, any_value(model_profile) as profile, count(*) as studies "
        "from study_votes group by 1 order by 1"
    ).to_pylist()
    sections = []
    for title, column in QUESTIONS.items():
        table = query(
            f"select {column} as grp, model_version, "
            "count(*) filter (where vote = 'benign') as benign, "
            "count(*) filter (where vote = 'malignant') as malignant "
            "from study_votes group by all order by grp, model_version"
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
    flags = query(
        "select qc_flags, count(*) as studies from study_votes where qc_flags <> '' "
        "group by 1 order by 2 desc"
    ).to_pylist()
    agreement = agreement_rows(tables)
    for unit, found in agreement.items():
        found["plot"] = agreement_plot(unit, found["rows"]) if found["rows"] else None
    compared = sum(m["compared"] for m in agreement["patients"]["left_out"])
    page = render(
        "cohort.html.j2",
        results=results,
        as_of=as_of,
        versions=versions,
        sections=sections,
        flags=flags,
        include_training=include_training,
        excluded_studies=excluded_studies,
        excluded_patients=excluded_patients,
        unknown_patients=unknown,
        references=tables[REFERENCE_OUTCOMES].num_rows,
        agreement=agreement,
        figure_names=FIGURE_NAMES,
    )
    path = out_dir / COHORT_PAGE
    path.write_text(page)
    agreement_frame(agreement).to_csv(out_dir / AGREEMENT_CSV, index=False)
    return CohortReport(path, excluded_studies, excluded_patients, unknown, compared)


def agreement_frame(agreement: dict[str, Any]) -> pd.DataFrame:
    """The agreement rows as one table: unit, grouping, group, model, the 2x2 counts,
    and each figure with its Wilson 95% CI (`_ci_low/_high`), its percentile bootstrap
    95% CI (`_boot_low/_high`, AGREEMENT_BOOTSTRAP resamples, seed SEED) and the cases
    it rests on."""
    records = []
    for unit, found in agreement.items():
        for row in found["rows"]:
            counts = row["agreement"]
            record: dict[str, Any] = {"unit": unit, "by": row["by"], "group": row["group"]}
            record.update(model_version=row["model"], n=counts.n, tp=counts.tp, fp=counts.fp)
            record.update(tn=counts.tn, fn=counts.fn)
            bootstrap = counts.bootstrap()
            for name in FIGURES:
                figure = row["figures"][name]
                record[name] = round(figure.value, 4)
                record[f"{name}_ci_low"] = round(figure.low, 4)
                record[f"{name}_ci_high"] = round(figure.high, 4)
                record[f"{name}_boot_low"] = round(bootstrap[name][0], 4)
                record[f"{name}_boot_high"] = round(bootstrap[name][1], 4)
                record[f"{name}_n"] = figure.n
            record["warnings"] = "; ".join(row["warnings"])
            records.append(record)
    return pd.DataFrame(records)
