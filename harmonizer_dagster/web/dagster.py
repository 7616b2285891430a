"""Asking the Dagster webserver to re-materialize partitions, load handed-in files at once,
cancel such loads and tell how their runs are doing, through its GraphQL API (the same
queries and mutations the UI sends), so no one needs a launchpad."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from harmonizer_dagster.core.secrets import redact

REPOSITORIES = """{
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
    ... on PythonError { message }
  }
}"""
LAUNCH = """mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on Error { message }
  }
}"""


RUN_STATUS = """query($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status }
    ... on PythonError { message }
    ... on RunNotFoundError { message }
  }
}"""
TERMINATE = """mutation($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunSuccess { run { status } }
    ... on TerminateRunFailure { message }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""


class DagsterError(RuntimeError):
    """Dagster could not be reached or refused: the message says which, for a person to act on."""


@dataclass(frozen=True)
class LaunchedRun:
    partition: str
    run_id: str
    url: str


def graphql(url: str, query: str, variables: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
    """The `data` of one GraphQL request to the webserver at `url`."""
    request = urllib.request.Request(
        f"{url.rstrip('/')}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise DagsterError(f"the Dagster webserver at {redact(url)} answered HTTP {error.code}") from error
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise DagsterError(
            f"cannot reach the Dagster webserver at {redact(url)} ({reason}): is it running, "
            "and is HARMONIZER_DAGSTER_URL right?"
        ) from error
    if payload.get("errors"):
        raise DagsterError(f"Dagster refused the request: {payload['errors'][0].get('message', payload['errors'])}")
    return payload["data"]


def job_location(url: str, job: str) -> tuple[str, str]:
    """(code location, repository) serving `job`: on the fleet each source lives on one Pi."""
    answer = graphql(url, REPOSITORIES)["repositoriesOrError"]
    if answer["__typename"] != "RepositoryConnection":
        raise DagsterError(f"Dagster could not list its code locations: {answer.get('message', answer['__typename'])}")
    for node in answer["nodes"]:
        if any(j["name"] == job for j in node["jobs"]):
            return node["location"]["name"], node["name"]
    raise DagsterError(f"no code location loaded in Dagster serves the job {job}")


def launch(url: str, ui_url: str, job: str, partition: str, tags: dict[str, str], run_config: dict) -> LaunchedRun:
    """One run of `job`, wherever a code location serves it."""
    location, repository = job_location(url, job)
    result = graphql(
        url,
        LAUNCH,
        {
            "params": {
                "selector": {"repositoryLocationName": location, "repositoryName": repository, "jobName": job},
                "runConfigData": run_config,
                "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
            }
        },
    )["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise DagsterError(f"{job} for {partition}: {result.get('message', result['__typename'])}")
    run_id = result["run"]["runId"]
    return LaunchedRun(partition, run_id, run_url(ui_url, run_id))


def run_url(ui_url: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/runs/{urllib.parse.quote(run_id)}"


def run_status(url: str, run_id: str) -> str | None:
    """The run's status as Dagster names it (QUEUED, STARTED, SUCCESS, FAILURE, CANCELED, ...), or
    None when Dagster does not know the run."""
    answer = graphql(url, RUN_STATUS, {"runId": run_id})["runOrError"]
    if answer["__typename"] == "Run":
        return answer["status"]
    if answer["__typename"] == "RunNotFoundError":
        return None
    raise DagsterError(f"Dagster could not tell the run's status: {answer.get('message', answer['__typename'])}")


def terminate(url: str, run_id: str) -> str:
    """Cancels a queued run or stops a running one; the run's status after the request."""
    answer = graphql(url, TERMINATE, {"runId": run_id})["terminateRun"]
    if answer["__typename"] != "TerminateRunSuccess":
        raise DagsterError(f"Dagster did not cancel run {run_id}: {answer.get('message', answer['__typename'])}")
    return answer["run"]["status"]


def launch_partition_runs(url: str, ui_url: str, source: str, partitions: list[str]) -> list[LaunchedRun]:
    """One run of the source's job per partition, as the UI's Materialize button starts it;
    each with its page in the UI at `ui_url`."""
    job = f"load_{source}"
    return [launch(url, ui_url, job, partition, {"dagster/partition": partition}, {}) for partition in partitions]
