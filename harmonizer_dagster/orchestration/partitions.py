"""A source's partitions, one per file version, and how a backfill groups them into runs."""

import dagster as dg

from harmonizer_dagster.core.settings import current
from harmonizer_dagster.core.spec import SourceSpec


def partitions_for(spec: SourceSpec) -> dg.DynamicPartitionsDefinition:
    """One partition per file in the source's landing folder, keyed by its relative path."""
    return dg.DynamicPartitionsDefinition(name=f"{spec.name}_files")


def backfill_policy() -> dg.BackfillPolicy:
    """A backfill hands each run a range of up to HARMONIZER_RUN_MAX_FILES files, as the landing
    sensors group theirs: one run per file would cost seconds of Dagster each."""
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=int(current("HARMONIZER_RUN_MAX_FILES")))
