"""The fleet's run launcher: Dagster's default launcher, which starts each run in the code
server that serves its source, plus the worker health check that run monitoring needs.

The default launcher cannot tell that a run's worker died with its Pi: such a run would stay
STARTED until the maximum runtime. Here run monitoring asks the code server that launched the
run (recorded in the run's `dagster/grpc_info` tag) whether it still executes it. A server that
answers without the run lost it (it was restarted, and systemd stopped its run workers with it);
a run whose server has not answered, and which has written no event, for
`unreachable_timeout_seconds` is taken for dead (a busy Pi that still writes events is not).
Either way the run is marked failed and run retries launch it again.

Code servers run as `dagster api grpc`: `dagster code-server start` proxies to a child server
that it replaces on a code reload, which would then answer for runs it never held.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from dagster import DefaultRunLauncher, Field, IntSource
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import CanCancelExecutionRequest, CanCancelExecutionResult
from dagster._serdes import deserialize_value
from dagster._serdes.config_class import ConfigurableClassData

DEFAULT_UNREACHABLE_TIMEOUT_SECONDS = 300
GRPC_TIMEOUT_SECONDS = 10


class CodeServerRunLauncher(DefaultRunLauncher):
    """Launches runs on the code servers (the Pis) and tells run monitoring when one lost a run."""

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        unreachable_timeout_seconds: int = DEFAULT_UNREACHABLE_TIMEOUT_SECONDS,
    ):
        super().__init__(inst_data=inst_data)
        self.unreachable_timeout_seconds = unreachable_timeout_seconds
        # Per run: since when its code server has not answered, while it stays so.
        self._unreachable_since: dict[str, float] = {}

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "unreachable_timeout_seconds": Field(
                IntSource,
                is_required=False,
                default_value=DEFAULT_UNREACHABLE_TIMEOUT_SECONDS,
                description="How long a code server may not answer before its runs are taken for dead. "
                "A network blip shorter than this never fails a run.",
            )
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> CodeServerRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        client = self._get_grpc_client_for_termination(run.run_id)
        if client is None:
            # Executed in process (`dagster job execute`): no server to ask; the maximum runtime applies.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not launched on a code server")
        server = f"{client.host}:{client.port or client.socket}"
        try:
            reply = client.can_cancel_execution(
                CanCancelExecutionRequest(run_id=run.run_id), timeout=GRPC_TIMEOUT_SECONDS
            )
        except DagsterUserCodeUnreachableError:
            now = time.time()
            self._forget_runs_unreachable_before(now - 2 * self.unreachable_timeout_seconds)
            down_for = now - self._unreachable_since.setdefault(run.run_id, now)
            silent_for = now - self._last_event_time(run.run_id)
            if min(down_for, silent_for) < self.unreachable_timeout_seconds:
                return CheckRunHealthResult(
                    WorkerStatus.RUNNING,
                    f"code server {server} unreachable for {down_for:.0f}s, last event {silent_for:.0f}s ago",
                    transient=True,
                )
            del self._unreachable_since[run.run_id]
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"code server {server} unreachable for {down_for:.0f}s and no event for {silent_for:.0f}s: "
                "its run worker is lost",
            )
        self._unreachable_since.pop(run.run_id, None)
        # The server holds a run it can cancel exactly while the run's worker process is alive.
        if deserialize_value(reply, CanCancelExecutionResult).can_cancel:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(
            WorkerStatus.NOT_FOUND, f"code server {server} no longer runs it: it restarted and the run worker is lost"
        )

    def _last_event_time(self, run_id: str) -> float:
        latest = self._instance.get_records_for_run(run_id, limit=1, ascending=False).records
        return latest[0].timestamp if latest else 0.0

    def _forget_runs_unreachable_before(self, cutoff: float) -> None:
        """Entries this old belong to runs that ended while their server was silent."""
        for run_id, since in list(self._unreachable_since.items()):
            if since < cutoff:
                del self._unreachable_since[run_id]
