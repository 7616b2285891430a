"""The fleet's run launcher: Dagster's default launcher, which starts each run in the code
server that serves its source, plus the worker health check that run monitoring needs.

The default launcher cannot tell that a run's worker died with its Pi: such a run would stay
STARTED until the maximum runtime. Here run monitoring asks the code server that launched the
run (recorded in the run's `dagster/grpc_info` tag) whether it still executes it. A server that
answers without the run lost it (it was restarted, and systemd stopped its run workers with it);
a run whose server has not answered, and which has written no event, for
`unreachable_timeout_seconds` is taken for dead (a busy Pi that still writes events is not).
Either way the run is marked failed and run retries launch it again.

On the embedded instance (`local_run_workers`) every run worker runs on this machine, so a run
executed in a process of its own (`dagster job execute`, `dagster asset materialize`) is lost
once that process has exited: nothing else would ever end it.

Code servers run as `dagster api grpc`: `dagster code-server start` proxies to a child server
that it replaces on a code reload, which would then answer for runs it never held.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from dagster import BoolSource, DagsterEventType, DefaultRunLauncher, Field, IntSource
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
        local_run_workers: bool = False,
    ):
        super().__init__(inst_data=inst_data)
        self.unreachable_timeout_seconds = unreachable_timeout_seconds
        self.local_run_workers = local_run_workers
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
            ),
            "local_run_workers": Field(
                BoolSource,
                is_required=False,
                default_value=False,
                description="Every run worker runs on this machine (an instance in a local SQLite folder): "
                "a run executed in its own process is failed once that process has exited.",
            ),
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
            # Executed in process (`dagster job execute`): no server to ask. On this machine its
            # process tells; elsewhere the maximum runtime applies.
            pid = self._run_process(run.run_id) if self.local_run_workers else None
            if pid is not None and not _process_exists(pid):
                return CheckRunHealthResult(
                    WorkerStatus.FAILED, f"its process (pid {pid}) has exited without ending it: the run worker is lost"
                )
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

    def _run_process(self, run_id: str) -> int | None:
        """The process that started executing the run, as its first event recorded it."""
        started = self._instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_START, limit=1).records
        event = started[0].event_log_entry.dagster_event if started else None
        return event.pid if event else None

    def _last_event_time(self, run_id: str) -> float:
        latest = self._instance.get_records_for_run(run_id, limit=1, ascending=False).records
        return latest[0].timestamp if latest else 0.0

    def _forget_runs_unreachable_before(self, cutoff: float) -> None:
        """Entries this old belong to runs that ended while their server was silent."""
        for run_id, since in list(self._unreachable_since.items()):
            if since < cutoff:
                del self._unreachable_since[run_id]


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True
