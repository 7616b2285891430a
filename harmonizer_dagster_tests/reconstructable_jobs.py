"""Module-level job factories, so tests can run jobs the way Dagster reconstructs them."""

import dagster as dg


def load_business_registry() -> dg.JobDefinition:
    from harmonizer_dagster.definitions import build_definitions

    return build_definitions().resolve_job_def("load_business_registry")
