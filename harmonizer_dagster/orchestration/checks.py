"""Each source's data-quality checks, evaluated per file version on its staged rows: the audit
of write-audit-publish (`core/publishing.py`), which holds a version failing a blocking check.

Dagster sees two asset checks per source: `blocking_checks`, every error-severity check of the
spec (a partition failing one is not published downstream), and `warning_checks`, the rest.
Each evaluation's metadata holds every check it stands for, with its figures, and each check
is also a row of the `data_quality_checks` table. Two evaluations per file, not one per check:
each is several writes to the instance's storage, and a run of many files pays them all.
"""

import warnings
from collections.abc import Sequence
from typing import Any

import dagster as dg

from harmonizer_dagster.core.publishing import Audit, audit
from harmonizer_dagster.core.quality import Evaluation, QualityCheck, checks_for
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.orchestration.partitions import partitions_for

# Dagster's asset check per severity of the spec's checks: its name, severity and whether it blocks.
GROUPS = {
    "error": ("blocking_checks", dg.AssetCheckSeverity.ERROR, True),
    "warning": ("warning_checks", dg.AssetCheckSeverity.WARN, False),
}


def _figures(evaluation: Evaluation) -> dict[str, Any]:
    """One check's evaluation as the JSON its group's metadata shows."""
    figures = {
        "passed": evaluation.passed,
        "observed_value": evaluation.observed,
        "threshold": evaluation.threshold,
        "message": evaluation.message,
        **evaluation.counts,
    }
    return {k: v for k, v in figures.items() if v is not None}


def _group_results(
    spec: SourceSpec, partition_key: str, evaluated: Sequence[tuple[QualityCheck, Evaluation]]
) -> list[dg.AssetCheckEvaluation]:
    """One evaluation per severity: it passes when all its checks pass, and says which did not."""
    results = []
    for severity, (name, dagster_severity, blocking) in GROUPS.items():
        group = [(check, evaluation) for check, evaluation in evaluated if check.severity == severity]
        if not group:
            continue
        failed = [(check.name, evaluation.message) for check, evaluation in group if not evaluation.passed]
        description = (
            f"{len(failed)} of {len(group)} failed: " + "; ".join(f"{check}: {why}" for check, why in failed)
            if failed
            else f"all {len(group)} passed"
        )
        results.append(
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey(spec.name),
                partition=partition_key,
                check_name=name,
                passed=not failed,
                severity=dagster_severity,
                blocking=blocking,
                description=description,
                metadata={
                    "failed_checks": ", ".join(check for check, _ in failed) or "none",
                    **{check.name: dg.MetadataValue.json(_figures(evaluation)) for check, evaluation in group},
                },
            )
        )
    return results


def check_specs(spec: SourceSpec) -> list[dg.AssetCheckSpec]:
    checks = checks_for(spec)
    # Partitioned asset checks are a preview feature in Dagster 1.13; they are what lets a
    # check judge exactly one file version, so the warning is silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name,
                asset=spec.name,
                blocking=blocking,
                partitions_def=partitions_for(spec),
                description="Every one of: " + ", ".join(c.name for c in checks if c.severity == severity),
            )
            for severity, (name, _, blocking) in GROUPS.items()
            if any(check.severity == severity for check in checks)
        ]


def check_output_names(spec: SourceSpec) -> list[str]:
    """The outputs of the audit op that stand for the source's asset checks, in `check_specs` order."""
    return [f"{spec.name}_{check.name}" for check in check_specs(spec)]


def report_audit(
    context: dg.OpExecutionContext, store: Warehouse, spec: SourceSpec, partition_key: str, source_id: int
) -> Audit:
    """Audits the file version the run staged and reports its checks as the source's asset checks
    of that partition, so the UI and data_quality_checks show the same."""
    result = audit(store, spec, partition_key, context.run_id, source_id)
    for evaluation in _group_results(spec, partition_key, result.evaluated):
        context.log_event(evaluation)  # type: ignore[arg-type]  # log_event accepts check evaluations
    return result
