"""Where what a step prints (stdout, stderr) is kept: in S3 when HARMONIZER_COMPUTE_LOG_BUCKET
is set, so the central webserver shows what a step printed on a Pi; else under `base_dir`
(the instance file passes $DAGSTER_HOME).

The instance's `compute_logs` names this class; it only picks one of Dagster's own managers,
because an instance file cannot say "S3 if a variable is set" by itself. Set the same variables
on the central machine and on every Pi: the Pis write the logs, the webserver reads them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import Field, StringSource
from dagster._core.storage.compute_log_manager import ComputeLogManager
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._serdes.config_class import ConfigurableClass, ConfigurableClassData

DEFAULT_PREFIX = "dagster-compute-logs"
UPLOAD_INTERVAL_SECONDS = 30


class ComputeLogStorage(ComputeLogManager, ConfigurableClass):
    """Never instantiated: building it from the instance file returns the manager the
    environment asks for (Dagster checks only that the named class is a compute log manager)."""

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": Field(StringSource, description="Folder under which logs are kept or staged.")}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> ComputeLogManager:
        home = Path(config_value["base_dir"])
        bucket = os.environ.get("HARMONIZER_COMPUTE_LOG_BUCKET", "").strip()
        if not bucket:
            return LocalComputeLogManager(str(home / "storage"), inst_data=inst_data)
        from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

        return S3ComputeLogManager(
            bucket=bucket,
            prefix=os.environ.get("HARMONIZER_COMPUTE_LOG_PREFIX") or DEFAULT_PREFIX,
            endpoint_url=os.environ.get("HARMONIZER_S3_ENDPOINT_URL") or None,
            local_dir=str(home / "compute_logs_staging"),
            # A long step's output reaches the UI while it runs, not only when it ends.
            upload_interval=UPLOAD_INTERVAL_SECONDS,
            inst_data=inst_data,
        )
