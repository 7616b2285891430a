"""The fleet's run queue: Dagster's QueuedRunCoordinator, with runs tagged by their assets.

The queue's limits (one run per source, two per Pi) act on run tags. The source jobs carry
them, but a run launched from an asset's page or by an asset backfill belongs to Dagster's
implicit asset job and would carry none, so the limits would not hold it back. Such a run
inherits the `source` and `harmonizer/host` tags of the assets it materializes, wherever
they all agree on one value.
"""

from __future__ import annotations

from dagster import QueuedRunCoordinator
from dagster._core.run_coordinator import SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.workspace.context import BaseWorkspaceRequestContext

INHERITED_TAGS = ("source", "harmonizer/host")


class AssetTaggedRunCoordinator(QueuedRunCoordinator):
    """Queues runs under the instance's limits, each tagged with its assets' source and host."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        inherited = tags_from_assets(run, context.workspace)
        if inherited:
            self._instance.add_run_tags(run.run_id, inherited)
            run = self._instance.get_run_by_id(run.run_id) or run
        return super().submit_run(SubmitRunContext(run, context.workspace))


def tags_from_assets(run: DagsterRun, workspace: BaseWorkspaceRequestContext) -> dict[str, str]:
    """The inherited tags the run lacks and all its assets agree on."""
    graph = workspace.asset_graph
    values: dict[str, set[str]] = {}
    for key in run.asset_selection or ():
        if not graph.has(key):
            continue
        tags = graph.get(key).tags
        for name in INHERITED_TAGS:
            values.setdefault(name, set()).add(tags.get(name, ""))
    return {
        name: next(iter(found))
        for name, found in values.items()
        if name not in run.tags and len(found) == 1 and "" not in found
    }
