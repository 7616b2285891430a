"""The data-quality workflow in the Dagster UI: triage job, a steward's decision on a held
version, dead-letter reprocessing, and a per-source report asset."""

from dataclasses import asdict
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from harmonizer_dagster.core.dead_letters import reprocess
from harmonizer_dagster.core.publishing import discard, held_versions, release
from harmonizer_dagster.core.report import quality_report
from harmonizer_dagster.core.settings import current
from harmonizer_dagster.core.spec import SourceSpec, load_specs
from harmonizer_dagster.core.triage import Selection, act, render, summarize
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.orchestration.resources import LandingZone, WarehouseResource


class TriageConfig(dg.Config):
    """Select issues (every given criterion must hold), then say what to do with them."""

    action: str = Field(description="resolve | ignore | auto_fix | manual_fix")
    note: str = Field(default="", description="Why; kept with the issues and any rule created.")
    issue_ids: list[str] = Field(default=[], description="Issue ids, as shown in data_quality_issues.")
    issue_type: str | None = Field(default=None, description="e.g. invalid_zip_code")
    source: str | None = Field(default=None, description="Source name, e.g. business_registry")
    partition_key: str | None = Field(default=None, description="One file version")
    field_name: str | None = Field(default=None, description="Canonical column name")
    pad_to_width: int | None = Field(default=None, description="auto_fix: left-pad digit values with zeros")
    date_format: str | None = Field(default=None, description="auto_fix: strptime format to read dates with")
    map_to: str | None = Field(
        default=None, description="auto_fix: replace the invalid values; manual_fix: the corrected value"
    )


@dg.op(description="Applies a triage action to the selected data-quality issues.")
def triage_selected_issues(context: dg.OpExecutionContext, config: TriageConfig, warehouse: WarehouseResource) -> dict:
    store = warehouse.open()
    selection = Selection(
        issue_ids=tuple(config.issue_ids),
        issue_type=config.issue_type,
        source=config.source,
        partition_key=config.partition_key,
        field_name=config.field_name,
    )
    context.log.info(render(summarize(store, selection)))
    outcome = act(
        store,
        selection,
        config.action,
        config.note,
        # Every spec, not only this location's sources: the fleet's central location triages all.
        specs=load_specs(Path(current("HARMONIZER_SOURCES_DIR"))),
        pad_to_width=config.pad_to_width,
        date_format=config.date_format,
        map_to=config.map_to,
        # OSS Dagster knows no user: the run that acted is what the issue can point back to.
        actor=f"dagster run {context.run_id}",
    )
    context.log.info(outcome.message())
    context.add_output_metadata(
        {
            "issues_updated": outcome.issues,
            "issues_not_fixed": outcome.unfixed,
            "rules_created": str(outcome.created),
            "rules_reused": str(outcome.reused),
        }
    )
    return asdict(outcome)


@dg.job(description="Resolve, ignore or fix data-quality issues selected by id, type, source, file or field.")
def triage_issues():
    triage_selected_issues()


class DecisionConfig(dg.Config):
    """A steward's decision on one held version (`harmonizer held list` and the triage page list them)."""

    source_id: int = Field(description="The held version's id in the sources registry.")
    decision: str = Field(description="release (publish it as it is) | discard (drop it for good)")
    reason: str = Field(description="Why: kept with the decision.")
    decided_by: str = Field(description="Who decides: kept with the decision.")


def build_decision_job(specs: list[SourceSpec]) -> dg.JobDefinition:
    by_name = {spec.name: spec for spec in specs}

    @dg.op(description="Releases or discards a version its blocking checks held.")
    def release_or_discard(context: dg.OpExecutionContext, config: DecisionConfig, warehouse: WarehouseResource):
        store = warehouse.open()
        found = held_versions(store, source_id=config.source_id)
        if not found or found[0].source not in by_name:
            raise dg.Failure(f"no held version {config.source_id} of this code location's sources")
        version, spec = found[0], by_name[found[0].source]
        by = f"{config.decided_by} (dagster run {context.run_id})"
        if config.decision == "release":
            published = release(store, spec, version.source_id, by, config.reason, context.run_id)
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=f"{spec.name}_published",
                    partition=version.partition_key,
                    metadata={"source_id": version.source_id, "released_by": by, "reason": config.reason}
                    | {"inserted": published.inserted, "updated": published.updated},
                )
            )
        elif config.decision == "discard":
            discard(store, spec, version.source_id, by, config.reason)
        else:
            raise dg.Failure(f"decision must be release or discard, not {config.decision!r}")
        context.log.info(f"{spec.name}/{version.partition_key}: {config.decision}d by {by}: {config.reason}")

    @dg.job(
        name="decide_held_version",
        description="Release (publish as it is) or discard a file version its blocking checks held; who and why "
        "are recorded.",
    )
    def decide():
        release_or_discard()

    return decide


def build_reprocess_job(specs: list[SourceSpec]) -> dg.JobDefinition:
    @dg.op(description="Retries pending failed records of every source after rules or spec fixes.")
    def reprocess_dead_letters(
        context: dg.OpExecutionContext, warehouse: WarehouseResource, landing: LandingZone
    ) -> dict:
        store = warehouse.open()
        results = {}
        for spec in specs:
            outcome = reprocess(spec, store, landing.staging_path)
            context.log.info(f"{spec.name}: {outcome}")
            results[spec.name] = outcome.__dict__
        context.add_output_metadata({name: str(figures) for name, figures in results.items()})
        return results

    @dg.job(description="Retries the dead-letter queue: failed records that now pass are upserted and marked.")
    def reprocess_failed_records():
        reprocess_dead_letters()

    return reprocess_failed_records


def build_report_asset(spec: SourceSpec, automatic: bool, host_tags: dict[str, str]) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{spec.name}_dq_report",
        deps=[spec.name],
        description=f"Open data-quality issues, check pass rates and trend for {spec.title}.",
        owners=[spec.owner],
        kinds={"markdown"},
        tags={"source": spec.name, **host_tags},
        automation_condition=dg.AutomationCondition.eager() if automatic else None,
    )
    def report(warehouse: WarehouseResource) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=report_metadata(warehouse.open(), spec))

    return report


def report_metadata(store: Warehouse, spec: SourceSpec) -> dict[str, Any]:
    """The report asset's metadata, also logged by the ingest jobs after they load a source."""
    markdown, figures = quality_report(store, spec)
    return {"report": dg.MetadataValue.md(markdown), **figures}
