"""The HTTP API, under /api/v1 beside the triage page: files in (an upload streamed into the
landing area a source uses), answers out (a version's state, counts, checks, issues, rows and
failed records) and data-quality triage, for clients with nothing but an API key.

A thin layer: every action calls the core function the CLI and the triage page call, with the
key's name as who acted. The OpenAPI document is served at /api/v1/openapi.json.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, which name
# types local to create_api.
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from python_multipart.multipart import parse_options_header

from harmonizer_dagster.core.api_keys import ApiKey, authenticate, secret_keys
from harmonizer_dagster.core.publishing import discard, failed_checks, held_versions, pending_changes, release
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.triage import Selection, act, fixed_partitions, issue_record, list_issues, summarize
from harmonizer_dagster.core.uploads import (
    FolderLanding,
    HandedIn,
    LandingArea,
    RefusedName,
    S3Landing,
    TooLarge,
    Upload,
    UploadInProgress,
    checked_name,
    find_upload,
    record_upload,
    set_upload_run,
)
from harmonizer_dagster.core.versions import (
    WAITING_RUN_STATES,
    find_version,
    latest_checks,
    list_versions,
    state,
    version_failed_batches,
    version_failed_records,
    version_issues,
    version_of_file,
    version_rows,
)
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.core.warehouse.base import WarehouseBusy
from harmonizer_dagster.core.warehouse.tables import canonical_columns
from harmonizer_dagster.orchestration.run_config import files_job_name, files_run_config
from harmonizer_dagster.web.dagster import (
    DagsterError,
    launch,
    launch_partition_runs,
    run_status,
    run_url,
    terminate,
)
from harmonizer_dagster.web.downloads import download
from harmonizer_dagster.web.receiving import FilePart, PipelinedWriter

if TYPE_CHECKING:
    from harmonizer_dagster.web.app import Settings

log = logging.getLogger(__name__)
MAX_PAGE = 1000
# The failed records' columns that are not text, by their SQL type, for Parquet downloads.
FAILED_TYPES = {"source_line_number": "BIGINT", "reprocessed": "BOOLEAN"}


class RateLimiter:
    """A token bucket per key: `per_minute` requests a minute, in bursts of up to as many."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait(self, name: str) -> float:
        """0 when the key may go on (one request is counted), else the seconds until it may."""
        rate = self.per_minute / 60
        with self._lock:
            now = time.monotonic()
            tokens, then = self._buckets.get(name, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - then) * rate)
            if tokens < 1:
                self._buckets[name] = (tokens, now)
                return (1 - tokens) / rate
            self._buckets[name] = (tokens - 1, now)
            return 0.0


class UploadAnswer(BaseModel):
    upload_id: str
    source: str
    name: str
    partition_key: str
    sha256: str
    size_bytes: int
    version: str = Field(description="The source version the file is, from its name or its time")
    uploaded_by: str
    status_url: str
    run_id: str | None = None
    run_url: str | None = None
    start_error: str | None = Field(None, description="Why the run asked for could not start (the sensor loads it)")


class Status(BaseModel):
    state: str = Field(description="queued, running, loaded, held, published, failed, canceled, discarded, superseded")
    reason: str | None = None
    source: str
    partition_key: str
    sha256: str
    version_id: int | None = Field(None, description="The registry's id of the version, once a run registered it")
    version_url: str | None = None
    run_id: str | None = None
    run_url: str | None = None
    run_status: str | None = None
    progress: dict[str, int | None] = {}
    counts: dict[str, int | None] = {}
    checks: list[dict[str, Any]] = []
    upload: dict[str, Any] | None = None


class Fix(BaseModel):
    pad_to_width: int | None = None
    date_format: str | None = None
    map_to: str | None = None


class IssueAction(BaseModel):
    """A triage action on the issues the filters select (one issue type at least, or ids)."""

    action: Literal["resolve", "ignore", "auto_fix", "manual_fix"]
    note: str = ""
    ids: list[str] = []
    type: str | None = None
    source: str | None = None
    partition: str | None = None
    field: str | None = None
    severity: Literal["error", "warning"] | None = None
    fix: Fix = Fix()


class Rematerialization(BaseModel):
    rules: list[int] = Field(min_length=1, description="The rule ids a fix answered")


class Decision(BaseModel):
    reason: str = Field(min_length=1, description="Why: kept with the decision")


Page = Annotated[int, Query(ge=1)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


def paged(rows: list[Any], total: int, page: int, limit: int, key: str) -> dict[str, Any]:
    return {"total": total, "page": page, "pages": max(1, math.ceil(total / limit)), "limit": limit, key: rows}


def create_api(
    settings: "Settings", store: Warehouse, specs: Callable[[], list[SourceSpec]], landing: LandingArea | None = None
) -> FastAPI:
    """The API over `store`, landing files where the settings say (or in `landing`)."""
    configured_keys = secret_keys(settings.api_keys)
    limiter = RateLimiter(settings.rate_limit)
    area = landing or landing_area(settings)
    bearer = HTTPBearer(auto_error=False, description="An API key: `harmonizer api-key create NAME --scope ...`")
    api = FastAPI(
        title="Harmonizer API",
        version="1",
        description="Hand in files, follow them to published, read their results and triage their issues.",
    )

    def spec_named(name: str) -> SourceSpec:
        found = next((spec for spec in specs() if spec.name == name), None)
        if found is None:
            raise HTTPException(404, f"no source {name}")
        return found

    def key_with(scope: str) -> Any:
        def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ApiKey:
            if credentials is None:
                raise HTTPException(
                    401, "an API key is needed: Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
                )
            key = authenticate(store, credentials.credentials, configured_keys)
            if key is None:
                raise HTTPException(401, "unknown or revoked API key", {"WWW-Authenticate": "Bearer"})
            wait = limiter.wait(key.name)
            if wait:
                raise HTTPException(
                    429,
                    f"key {key.name} is over {settings.rate_limit} requests a minute",
                    {"Retry-After": str(math.ceil(wait))},
                )
            if not key.allows(scope):
                raise HTTPException(403, f"key {key.name} does not have the {scope} scope")
            return key

        return Depends(check)

    Uploader = Annotated[ApiKey, key_with("upload")]
    Reader = Annotated[ApiKey, key_with("read")]
    Triager = Annotated[ApiKey, key_with("triage")]

    @api.exception_handler(ValueError)
    async def refused(_request: Request, error: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @api.exception_handler(DagsterError)
    async def dagster_unavailable(_request: Request, error: DagsterError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=502)

    @api.exception_handler(WarehouseBusy)
    async def busy(_request: Request, error: WarehouseBusy) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "5"})

    @api.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Whether the service answers; no key needed."""
        return {"status": "ok"}

    @api.get("/version", tags=["service"])
    def service_version() -> dict[str, str]:
        """The API's and the harmonizer's versions; no key needed."""
        return {"api": "v1", "harmonizer": package_version("harmonizer_dagster")}

    @api.get("/sources", tags=["status"])
    def sources(_key: Reader) -> list[dict[str, str]]:
        """The sources files can be handed in for, with their format."""
        return [{"name": s.name, "title": s.title, "format": s.format} for s in specs()]

    # -- files in ---------------------------------------------------------------------------

    async def receive(request: Request, key: ApiKey, spec: SourceSpec, name: str | None, start: bool) -> JSONResponse:
        """Streams the body (raw, or the multipart part named `file`) into the landing area."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.upload_max_bytes:
            raise HTTPException(413, f"the file is over the upload limit of {settings.upload_max_bytes:,} bytes")
        content_type, options = parse_options_header(request.headers.get("content-type", ""))
        part = (
            FilePart(options[b"boundary"])
            if content_type == b"multipart/form-data" and b"boundary" in options
            else None
        )
        if part is None and not name:
            raise HTTPException(
                400, "name the file: ?name=FILE with a raw body, or send it as the multipart field `file`"
            )
        writer = PipelinedWriter()

        async def start_upload(file_name: str) -> Upload:
            checked = checked_name(spec, file_name)
            return await anyio.to_thread.run_sync(area.start, spec, checked, settings.upload_max_bytes)

        try:
            if part is None:
                writer.upload = await start_upload(name or "")
            async for chunk in request.stream():
                data = part.feed(chunk) if part else [chunk]
                if part and part.started and writer.upload is None:
                    writer.upload = await start_upload(name or part.filename or "")
                await writer.add(data)
            if part and not part.finished:
                raise HTTPException(400, "the multipart body holds no complete field named `file`")
            await writer.add([], finished=True)
            upload = writer.upload
            assert upload is not None
            fingerprint = await anyio.to_thread.run_sync(upload.commit)
        except BaseException as error:
            # A cut connection, a refused name, an over-large file: nothing is left behind.
            if writer.upload is not None:
                with contextlib.suppress(BaseException):
                    await writer.settle()
                await anyio.to_thread.run_sync(writer.upload.abort)
            if isinstance(error, RefusedName):
                raise HTTPException(400, str(error)) from None
            if isinstance(error, TooLarge):
                raise HTTPException(413, str(error)) from None
            if isinstance(error, UploadInProgress):
                raise HTTPException(409, str(error)) from None
            raise
        final_name = upload.partition_key.rsplit("/", 1)[-1]
        handed = await anyio.to_thread.run_sync(
            record_upload, store, spec, final_name, upload.partition_key, fingerprint, key.name
        )
        log.info(f"{key.name} handed in {spec.name}/{final_name} ({fingerprint.size_bytes:,} bytes)")
        answer = UploadAnswer(
            upload_id=handed.upload_id,
            source=spec.name,
            name=final_name,
            partition_key=handed.partition_key,
            sha256=handed.file_hash,
            size_bytes=handed.size_bytes,
            version=handed.version,
            uploaded_by=key.name,
            status_url=str(request.url_for("upload_status", upload_id=handed.upload_id)),
        )
        if start:
            try:
                run = await anyio.to_thread.run_sync(start_load, spec, handed)
                answer.run_id, answer.run_url = run.run_id, run.url
            except DagsterError as error:
                answer.start_error = f"{error}; the landing sensor loads the file when it sees it"
        return JSONResponse(answer.model_dump(), status_code=201)

    def start_load(spec: SourceSpec, handed: HandedIn) -> Any:
        tags = {"source": spec.name, "harmonizer/upload": handed.upload_id}
        config = files_run_config(spec, [handed.partition_key])
        run = launch(
            settings.dagster_url, settings.ui_url, files_job_name(spec.name), handed.partition_key, tags, config
        )
        set_upload_run(store, handed.upload_id, run.run_id)
        return run

    upload_doc = (
        "The answer names the version (SHA-256, partition key, source version) and its status URL. "
        "With start=true a run loads it at once; else the landing sensor loads it as any dropped file."
    )
    raw_body = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    multipart_body = {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        }
    }

    @api.post(
        "/sources/{source}/files",
        status_code=201,
        response_model=UploadAnswer,
        tags=["files in"],
        summary="Hand in a file: the multipart field `file` (its file name, or ?name=), or a raw body and ?name=",
        description=upload_doc,
        openapi_extra={"requestBody": {"required": True, "content": multipart_body | raw_body}},
    )
    async def upload_file(
        request: Request, source: str, key: Uploader, name: str | None = None, start: bool = False
    ) -> JSONResponse:
        return await receive(request, key, spec_named(source), name, start)

    @api.put(
        "/sources/{source}/files/{name}",
        status_code=201,
        response_model=UploadAnswer,
        tags=["files in"],
        summary="Hand in a file as the raw request body (curl -T FILE)",
        description=upload_doc,
        openapi_extra={"requestBody": {"required": True, "content": raw_body}},
    )
    async def put_file(request: Request, source: str, name: str, key: Uploader, start: bool = False) -> JSONResponse:
        return await receive(request, key, spec_named(source), name, start)

    # -- status -----------------------------------------------------------------------------

    def dagster_status(run_id: str | None) -> str | None:
        """The run's status, or None when there is no run or Dagster cannot say: the registry
        alone then tells the state."""
        if not run_id:
            return None
        try:
            return run_status(settings.dagster_url, run_id)
        except DagsterError as error:
            log.warning(f"run {run_id}: {error}")
            return None

    def status_of(
        request: Request, source: str, partition_key: str, file_hash: str, version: dict | None, run_id: str | None
    ) -> Status:
        run_id = (version or {}).get("run_id") or run_id
        asked = dagster_status(run_id) if version is None or version["status"] == "processing" else None
        current, reason = state(version, asked)
        answer = Status(
            state=current,
            reason=reason,
            source=source,
            partition_key=partition_key,
            sha256=file_hash,
            run_id=run_id,
            run_url=run_url(settings.ui_url, run_id) if run_id else None,
            run_status=asked,
        )
        if version is not None:
            source_id = int(version["source_id"])
            answer.version_id = source_id
            answer.version_url = str(request.url_for("version_status", source_id=source_id))
            answer.progress = {
                "records_done": version["records_processed"],
                "records_expected": version["records_expected"],
            }
            spec = next((s for s in specs() if s.name == source), None)
            counts = store.version_counts(source_id)
            answer.counts = counts or {n: version[n] for n in version if n.startswith("records_")}
            answer.checks = latest_checks(store, spec, source_id)
        return answer

    @api.get("/uploads/{upload_id}", response_model=Status, name="upload_status", tags=["status"])
    def upload_status(request: Request, upload_id: str, _key: Reader) -> Status:
        """An uploaded file's state: queued until a run registers it, then its version's."""
        handed = find_upload(store, upload_id)
        if handed is None:
            raise HTTPException(404, f"no upload {upload_id}")
        version = version_of_file(store, handed.source, handed.partition_key, handed.file_hash)
        answer = status_of(request, handed.source, handed.partition_key, handed.file_hash, version, handed.run_id)
        answer.upload = {"upload_id": handed.upload_id, "uploaded_by": handed.uploaded_by, "version": handed.version}
        return answer

    def found_version(source_id: int) -> dict[str, Any]:
        version = find_version(store, source_id)
        if version is None:
            raise HTTPException(404, f"no version {source_id}")
        return version

    @api.get("/versions/{source_id}", response_model=Status, name="version_status", tags=["status"])
    def version_status(request: Request, source_id: int, _key: Reader) -> Status:
        """A version's state, progress, counts and checks."""
        version = found_version(source_id)
        return status_of(request, version["source_type"], version["partition_key"], version["file_hash"], version, None)

    @api.get("/sources/{source}/versions", tags=["status"])
    def source_versions(
        source: str, _key: Reader, status: str | None = None, page: Page = 1, limit: Limit = 50
    ) -> dict[str, Any]:
        """A source's versions, newest first; `status` filters by the registry's status
        (processing, staged, held, completed, failed, discarded, ...)."""
        spec_named(source)
        rows, total = list_versions(store, source, status, page, limit)
        return paged(rows, total, page, limit, "versions")

    def cancel(run_id: str | None, key: ApiKey) -> dict[str, str]:
        if not run_id:
            raise HTTPException(409, "no run loads this file yet: the landing sensor has not started one")
        status = run_status(settings.dagster_url, run_id)
        if status not in (*WAITING_RUN_STATES, "STARTED"):
            raise HTTPException(
                409, f"run {run_id} is {(status or 'unknown').lower()}: only a queued or running load can be canceled"
            )
        after = terminate(settings.dagster_url, run_id)
        log.info(f"{key.name} canceled run {run_id}")
        return {"run_id": run_id, "run_status": after, "canceled_by": key.name}

    @api.post("/uploads/{upload_id}/cancel", tags=["status"])
    def cancel_upload(upload_id: str, key: Uploader) -> dict[str, str]:
        """Cancels the queued or running load of an uploaded file, through Dagster."""
        handed = find_upload(store, upload_id)
        if handed is None:
            raise HTTPException(404, f"no upload {upload_id}")
        version = version_of_file(store, handed.source, handed.partition_key, handed.file_hash)
        return cancel((version or {}).get("run_id") or handed.run_id, key)

    @api.post("/versions/{source_id}/cancel", tags=["status"])
    def cancel_version(source_id: int, key: Uploader) -> dict[str, str]:
        """Cancels the queued or running load of a version, through Dagster."""
        return cancel(found_version(source_id)["run_id"], key)

    # -- results ----------------------------------------------------------------------------

    @api.get("/versions/{source_id}/issues", tags=["results"])
    def issues_of_version(source_id: int, _key: Reader, page: Page = 1, limit: Limit = 100) -> dict[str, Any]:
        """A version's data-quality issues in file order, a page at a time."""
        found_version(source_id)
        rows, total = version_issues(store, source_id, page, limit)
        return paged(rows, total, page, limit, "issues")

    @api.get("/versions/{source_id}/failed-records", tags=["results"])
    def failed_of_version(
        source_id: int,
        _key: Reader,
        page: Page = 1,
        limit: Limit = 100,
        format: Literal["json", "csv", "parquet"] = "json",
    ) -> Any:
        """A version's rejected records: JSON pages, or the whole as a CSV or Parquet download."""
        version = found_version(source_id)
        if format == "json":
            rows, total = version_failed_records(store, source_id, page, limit)
            return paged(rows, total, page, limit, "failed_records")
        names, batches = version_failed_batches(store, source_id)
        types = [FAILED_TYPES.get(name, "VARCHAR") for name in names]
        return download(f"{version['source_type']}-{source_id}-failed", format, names, types, batches)

    @api.get("/versions/{source_id}/rows", tags=["results"])
    def rows_of_version(source_id: int, _key: Reader, format: Literal["csv", "parquet"] = "csv") -> Any:
        """The rows a version holds, streamed as CSV or Parquet: once published, those it wrote to
        the table consumers read; while loaded or held, its staged rows."""
        version = found_version(source_id)
        spec = spec_named(version["source_type"])
        names, batches = version_rows(store, spec, version)
        types = dict(canonical_columns(spec))
        return download(f"{spec.name}-{source_id}", format, names, [types[n] for n in names], batches)

    # -- data quality -----------------------------------------------------------------------

    @api.get("/issues", tags=["data quality"])
    def issues(
        _key: Reader,
        source: str | None = None,
        partition: str | None = None,
        field: str | None = None,
        severity: str | None = None,
        type: str | None = None,
        status: str = Query("pending", description="pending, resolved, ignored, auto_fix, manual_fix or all"),
        grouped: bool = Query(False, description="groups by source, type and severity, with examples"),
        examples: int = Query(3, ge=0, le=20),
        page: Page = 1,
        limit: Limit = 50,
    ) -> dict[str, Any]:
        """Issues with the filters of `harmonizer dq list`: a page of them, or their groups."""
        chosen = Selection(
            issue_type=type,
            source=source,
            partition_key=partition,
            field_name=field,
            severity=severity,
            status=None if status == "all" else status,
        )
        if grouped:
            groups = summarize(store, chosen, examples)
            return {
                "total": sum(g.count for g in groups),
                "groups": [
                    {
                        "source": g.source,
                        "type": g.issue_type,
                        "severity": g.severity,
                        "count": g.count,
                        "examples": [dict(zip(("record", "value", "expected"), e, strict=True)) for e in g.examples],
                    }
                    for g in groups
                ],
            }
        listing = list_issues(store, chosen, page, limit)
        return paged(listing.rows, listing.total, page, limit, "issues")

    @api.get("/issues/{issue_id}", tags=["data quality"])
    def issue(issue_id: str, _key: Reader) -> dict[str, Any]:
        """One issue, the others on its line and its record (from the dead letters or the table)."""
        found = issue_record(store, issue_id, specs())
        if found is None:
            raise HTTPException(404, f"no issue {issue_id}")
        return {"issue": found.issue, "issues": found.issues, "record": found.record, "origin": found.origin}

    @api.post("/issues/actions", tags=["data quality"])
    def issue_action(body: IssueAction, key: Triager) -> dict[str, Any]:
        """Resolves, ignores or fixes the selected pending issues, one issue type (a group) or
        given ids at a time, with the rules of `harmonizer dq resolve`; recorded as done by the key."""
        if not body.ids and body.type is None:
            raise HTTPException(400, "an action applies to given issue ids or to one issue type: set ids or type")
        chosen = Selection(
            issue_ids=tuple(body.ids),
            issue_type=body.type,
            source=body.source,
            partition_key=body.partition,
            field_name=body.field,
            severity=body.severity,
        )
        fixes = body.fix.model_dump() if body.action in ("auto_fix", "manual_fix") else {}
        outcome = act(store, chosen, body.action, body.note, specs=specs(), actor=key.name, **fixes)
        return {
            "action": outcome.action,
            "issues": outcome.issues,
            "unfixed": outcome.unfixed,
            "rules": outcome.rules,
            "created_rules": outcome.created,
            "message": outcome.message(),
            "by": key.name,
        }

    @api.post("/rules/rematerialize", tags=["data quality"])
    def rematerialize(body: Rematerialization, key: Triager) -> dict[str, Any]:
        """Loads again, through Dagster, every file version with issues these rules fixed (the
        `rules` a fix answered), so the fixed values reach the tables: the triage page's
        Re-materialize button."""
        launched = [
            run
            for source, partitions in fixed_partitions(store, body.rules).items()
            for run in launch_partition_runs(settings.dagster_url, settings.ui_url, source, partitions)
        ]
        log.info(f"{key.name} re-materialized {len(launched)} file version(s) for rules {body.rules}")
        return {"runs": [vars(run) for run in launched]}

    @api.get("/held", tags=["data quality"])
    def held(_key: Reader, source: str | None = None) -> list[dict[str, Any]]:
        """Versions their blocking checks held out of the tables, oldest first."""
        return [vars(version) for version in held_versions(store, source)]

    @api.get("/held/{source_id}", tags=["data quality"])
    def held_version(source_id: int, _key: Reader, page: Page = 1, limit: Limit = 50) -> dict[str, Any]:
        """A held version, the checks it failed and what publishing it would change."""
        found = held_versions(store, source_id=source_id)
        if not found:
            raise HTTPException(404, f"no held version {source_id}")
        spec = spec_named(found[0].source)
        changes, total = pending_changes(store, spec, source_id, page, limit)
        return {
            "version": vars(found[0]),
            "failed_checks": [vars(check) for check in failed_checks(store, source_id)],
            **paged([vars(change) for change in changes], total, page, limit, "changes"),
        }

    def decided(source_id: int) -> SourceSpec:
        version = find_version(store, source_id)
        if version is None:
            raise HTTPException(404, f"no version {source_id}")
        if version["status"] != "held":
            raise HTTPException(409, f"version {source_id} is {version['status']}, not held")
        return spec_named(version["source_type"])

    @api.post("/held/{source_id}/release", tags=["data quality"])
    def release_version(source_id: int, body: Decision, key: Triager) -> dict[str, Any]:
        """Publishes a held version as it is; who (the key) and why are recorded."""
        published = release(store, decided(source_id), source_id, key.name, body.reason)
        return {"released_by": key.name, **vars(published)}

    @api.post("/held/{source_id}/discard", tags=["data quality"])
    def discard_version(source_id: int, body: Decision, key: Triager) -> dict[str, Any]:
        """Drops a held version; its issues stay. Who (the key) and why are recorded."""
        partition_key = discard(store, decided(source_id), source_id, key.name, body.reason)
        return {"discarded_by": key.name, "source_id": source_id, "partition_key": partition_key}

    return api


def landing_area(settings: "Settings") -> LandingArea:
    """The S3 bucket when the deployment has one (as its S3 sensors watch), else the folder."""
    if not settings.s3_bucket:
        return FolderLanding(settings.landing_dir)
    import boto3

    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None)
    return S3Landing(client, settings.s3_bucket, settings.s3_prefix)
