"""How a run of a source's files job is named and configured, without importing Dagster: the
landing sensors ask for such runs, and so does the HTTP API, through Dagster's GraphQL API."""

from collections.abc import Sequence

from harmonizer_dagster.core.spec import SourceSpec


def files_job_name(source: str) -> str:
    """The job that loads the files its run config names, each as its own partition."""
    return f"load_{source}_files"


def files_run_config(spec: SourceSpec, partition_keys: Sequence[str]) -> dict:
    """The run config that makes a run of the source's files job load exactly these files."""
    return {"ops": {f"{spec.name}_files_to_load": {"config": {"partition_keys": list(partition_keys)}}}}
