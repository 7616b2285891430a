"""The data-quality triage page: the legacy dashboard's views and one-click actions, served
next to Dagster's UI (which cannot host it). Every action calls the same core functions as
the CLI and the triage job, and records who acted.

Server-rendered HTML forms, POST-redirect-GET; a CSRF token per session (signed cookie).
"""

from __future__ import annotations

import itertools
import os
import secrets
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from harmonizer_dagster.core.dead_letters import list_failed, reprocess
from harmonizer_dagster.core.publishing import discard, failed_checks, held_versions, pending_changes, release
from harmonizer_dagster.core.report import overview
from harmonizer_dagster.core.secrets import redact, secret_values
from harmonizer_dagster.core.settings import DEFAULTS, current, seeded_landing
from harmonizer_dagster.core.spec import SourceSpec, load_specs
from harmonizer_dagster.core.triage import (
    Selection,
    act,
    counted,
    facets,
    fixed_partitions,
    issue_record,
    list_issues,
    list_rules,
    summarize,
)
from harmonizer_dagster.core.warehouse import Warehouse, open_warehouse
from harmonizer_dagster.web.api import create_api
from harmonizer_dagster.web.dagster import DagsterError, launch_partition_runs
from harmonizer_dagster.web.metrics import metrics_endpoint

HERE = Path(__file__).parent
PAGE_SIZE = 50
# Characters of a value a listing shows; the record view shows more, never all of a huge one.
LIST_WIDTH = 80
RECORD_WIDTH = 10_000
# The issue filters, by query parameter; `type` is the group a Review opens.
FILTERS = ("source", "partition", "field", "severity", "status", "type")
FIXES = {"pad": "pad_to_width", "date": "date_format", "map": "map_to"}


@dataclass(frozen=True)
class Settings:
    """Where the page reads and acts; from the environment like every other process."""

    warehouse_url: str
    schema: str = "harmonizer"
    dagster_url: str = DEFAULTS["HARMONIZER_DAGSTER_URL"]
    dagster_ui_url: str = ""
    secret: str = field(default="", repr=False)
    sources_dir: Path = Path(DEFAULTS["HARMONIZER_SOURCES_DIR"])
    staging_dir: Path = Path(DEFAULTS["HARMONIZER_STAGING_DIR"])
    # Where the API lands files: the S3 bucket when set, else the folder.
    landing_dir: Path = Path(DEFAULTS["HARMONIZER_LANDING_DIR"])
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str = ""
    upload_max_bytes: int = int(DEFAULTS["HARMONIZER_UPLOAD_MAX_BYTES"])
    rate_limit: int = int(DEFAULTS["HARMONIZER_API_RATE_LIMIT"])
    api_keys: str = field(default="", repr=False)

    @classmethod
    def from_environment(cls, schema: str = "harmonizer") -> Settings:
        return cls(
            warehouse_url=current("HARMONIZER_WAREHOUSE_URL"),
            schema=schema,
            dagster_url=current("HARMONIZER_DAGSTER_URL"),
            dagster_ui_url=current("HARMONIZER_DAGSTER_UI_URL"),
            secret=current("HARMONIZER_DQ_SECRET"),
            sources_dir=Path(current("HARMONIZER_SOURCES_DIR")),
            staging_dir=Path(current("HARMONIZER_STAGING_DIR")),
            # The landing sensors' folder: the default one starts as a copy of the samples.
            landing_dir=Path(os.environ["HARMONIZER_LANDING_DIR"])
            if "HARMONIZER_LANDING_DIR" in os.environ
            else seeded_landing(Path(DEFAULTS["HARMONIZER_LANDING_DIR"])),
            s3_bucket=current("HARMONIZER_S3_BUCKET"),
            s3_prefix=current("HARMONIZER_S3_PREFIX"),
            s3_endpoint_url=current("HARMONIZER_S3_ENDPOINT_URL"),
            upload_max_bytes=int(current("HARMONIZER_UPLOAD_MAX_BYTES")),
            rate_limit=int(current("HARMONIZER_API_RATE_LIMIT")),
            api_keys=current("HARMONIZER_API_KEYS"),
        )

    @property
    def ui_url(self) -> str:
        return (self.dagster_ui_url or self.dagster_url).rstrip("/")


def cut(value: object, width: int = LIST_WIDTH) -> str:
    """A value for a listing: at most `width` characters, the cut marked with how much is left."""
    text = "(no value)" if value is None else str(value)
    return text if len(text) <= width else f"{text[:width]}… ({len(text) - width:,} more characters)"


def query_string(base: dict[str, str], **changes: str) -> str:
    """A page's query string: its filters with `changes`, empty ones left out."""
    return urllib.parse.urlencode({k: v for k, v in (base | changes).items() if v})


def actor(request: Request) -> str:
    """Who acts: the user the authenticating proxy names (X-Forwarded-User), else anonymous."""
    return request.headers.get("x-forwarded-user", "").strip()[:200] or "anonymous"


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


async def checked_form(request: Request) -> FormData:
    """The POSTed form, refused unless it carries the session's CSRF token."""
    form = await request.form()
    sent, expected = str(form.get("csrf", "")), request.session.get("csrf", "")
    if not expected or not secrets.compare_digest(sent, expected):
        raise HTTPException(403, "missing or stale form token: reload the page and try again")
    return form


def flash(request: Request, text: str, kind: str = "ok", links: list[tuple[str, str]] = ()) -> None:
    """A message for the next page shown (POST-redirect-GET)."""
    request.session.setdefault("flash", []).append({"kind": kind, "text": text, "links": [list(x) for x in links]})


def selection(params: Any, status: str | None = "pending") -> Selection:
    """The issues the filters select; the same criteria as `harmonizer dq list`."""
    value = {name: (params.get(name) or None) for name in FILTERS}
    return Selection(
        issue_type=value["type"],
        source=value["source"],
        partition_key=value["partition"],
        field_name=value["field"],
        severity=value["severity"],
        status=status,
    )


def page_number(request: Request) -> int:
    try:
        return max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        return 1


def create_app(settings: Settings, store: Warehouse | None = None) -> Starlette:
    """The triage page over `store` (default: the warehouse the settings name), `/metrics` and
    the HTTP API under `/api/v1`."""
    store = store or open_warehouse(settings.warehouse_url, settings.schema)
    store.migrate([])
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    environment.filters["cut"] = cut
    environment.filters["quote"] = lambda value: urllib.parse.quote(str(value), safe="")
    environment.filters["counted"] = counted
    environment.globals["qs"] = query_string
    templates = Jinja2Templates(env=environment)
    warehouse = f"{redact(settings.warehouse_url, secret_values(os.environ))} (schema {settings.schema})"

    def specs() -> list[SourceSpec]:
        return list(load_specs(settings.sources_dir))

    def spec_named(name: str) -> SourceSpec | None:
        return next((s for s in specs() if s.name == name), None)

    def render(request: Request, name: str, **context: Any) -> Response:
        root = request.scope.get("root_path", "")
        return templates.TemplateResponse(
            request,
            name,
            {
                "root": root,
                "csrf": csrf_token(request),
                "flashes": request.session.pop("flash", []),
                "warehouse": warehouse,
                "user": actor(request),
                "dagster": settings.ui_url,
                **context,
            },
        )

    def back(request: Request, path: str, query: str = "") -> RedirectResponse:
        """To a page of this app (never elsewhere), with a query string rebuilt from its pairs."""
        query = urllib.parse.urlencode(urllib.parse.parse_qsl(query))
        target = request.scope.get("root_path", "") + path + (f"?{query}" if query else "")
        return RedirectResponse(target, status_code=303)

    async def sources_page(request: Request) -> Response:
        return render(request, "sources.html", sources=overview(store))

    async def issues_page(request: Request) -> Response:
        params = request.query_params
        status = params.get("status", "pending")
        chosen = selection(params, None if status == "all" else status)
        groups = summarize(store, chosen)
        cards = [
            (key, list(items))
            for key, items in itertools.groupby(
                sorted(groups, key=lambda g: (g.source, g.issue_type)), key=lambda g: (g.source, g.issue_type)
            )
        ]
        cards.sort(key=lambda card: -sum(g.count for g in card[1]))
        rematerialize = fixed_partitions(store, request.session.get("rematerialize", []))
        total = sum(g.count for g in groups)
        return render(
            request,
            "issues.html",
            cards=cards,
            total=total,
            issues=list_issues(store, chosen, page_number(request), PAGE_SIZE, total),
            facets=facets(store),
            filters={name: params.get(name, "") for name in FILTERS} | {"status": status},
            query=query_string({k: v for k, v in params.items() if k in FILTERS}),
            rematerialize=rematerialize,
        )

    def acted(request: Request, run: Callable[[], Any]) -> None:
        """Runs a triage action, flashing its outcome (or why it could not run); a fix's rules
        are kept for the re-materialization button."""
        try:
            outcome = run()
        except ValueError as error:
            flash(request, str(error), "error")
            return
        flash(request, outcome.message(), "warn" if outcome.unfixed else "ok")
        if outcome.rules:
            request.session["rematerialize"] = sorted({*request.session.get("rematerialize", []), *outcome.rules})

    def fix_arguments(form: FormData) -> dict[str, Any]:
        kind, value = str(form.get("fix", "")), str(form.get("value", ""))
        if kind not in FIXES:
            raise ValueError("choose a fix: pad to width, date format or value map")
        if kind == "pad":
            if not value.strip().isdigit():
                raise ValueError("pad to width needs a whole number, e.g. 5")
            return {"pad_to_width": int(value)}
        if not value:
            raise ValueError("the fix needs a value")
        return {FIXES[kind]: value}

    async def issues_action(request: Request) -> Response:
        form = await checked_form(request)
        action = str(form.get("action", ""))
        chosen = selection(form)
        note = str(form.get("note", ""))

        def run() -> Any:
            if action == "auto_fix":
                return act(store, chosen, "auto_fix", note, specs=specs(), actor=actor(request), **fix_arguments(form))
            if action not in ("ignore", "resolve"):
                raise ValueError(f"unknown action {action!r}")
            if chosen.issue_type is None:
                raise ValueError("an action applies to one issue type: choose a group")
            return act(store, chosen, action, note, actor=actor(request))

        acted(request, run)
        return back(request, "/issues", str(form.get("back", "")))

    async def record_page(request: Request) -> Response:
        found = issue_record(store, request.path_params["issue_id"], specs())
        if found is None:
            raise HTTPException(404, "no such issue")
        return render(request, "record.html", found=found, width=RECORD_WIDTH)

    async def record_action(request: Request) -> Response:
        form = await checked_form(request)
        issue_id = request.path_params["issue_id"]
        action = str(form.get("action", ""))
        one = Selection(issue_ids=(issue_id,))
        note = str(form.get("note", ""))

        def run() -> Any:
            if action == "manual_fix":
                value = str(form.get("value", ""))
                return act(store, one, "manual_fix", note, specs=specs(), map_to=value, actor=actor(request))
            if action not in ("ignore", "resolve"):
                raise ValueError(f"unknown action {action!r}")
            return act(store, one, action, note, actor=actor(request))

        acted(request, run)
        return back(request, f"/issues/{urllib.parse.quote(issue_id)}")

    async def rematerialize(request: Request) -> Response:
        form = await checked_form(request)
        partitions = fixed_partitions(store, request.session.get("rematerialize", []))
        try:
            for source, keys in partitions.items():
                runs = launch_partition_runs(settings.dagster_url, settings.ui_url, source, keys)
                flash(
                    request,
                    f"{source}: {counted(len(runs), 'run')} launched; the new rules apply as they load",
                    links=[(f"run {r.run_id[:8]} ({r.partition})", r.url) for r in runs],
                )
            request.session.pop("rematerialize", None)
        except DagsterError as error:
            flash(request, str(error), "error")
        return back(request, "/issues", str(form.get("back", "")))

    async def rules_page(request: Request) -> Response:
        return render(request, "rules.html", rules=list_rules(store))

    async def rule_toggle(request: Request) -> Response:
        form = await checked_form(request)
        rule_id = request.path_params["rule_id"]
        enabled = form.get("enabled") == "1"
        if store.set_rule_enabled(rule_id, enabled):
            flash(request, f"rule {rule_id} {'enabled' if enabled else 'disabled'}: it applies from the next load on")
        else:
            flash(request, f"no rule {rule_id}", "error")
        return back(request, "/rules")

    async def dead_letters_page(request: Request) -> Response:
        params = request.query_params
        state = params.get("state", "pending")
        reprocessed = {"pending": False, "reprocessed": True}.get(state)
        page = page_number(request)
        rows, total = list_failed(store, params.get("source") or None, reprocessed, page, PAGE_SIZE)
        sources = [name for (name,) in store.query("SELECT DISTINCT source_type FROM {schema}.sources ORDER BY 1")]
        return render(
            request,
            "dead_letters.html",
            rows=rows,
            total=total,
            page=page,
            limit=PAGE_SIZE,
            sources=sources,
            filters={"source": params.get("source", ""), "state": state},
            query=query_string({k: v for k, v in params.items() if k in ("source", "state")}),
        )

    async def dead_letters_reprocess(request: Request) -> Response:
        form = await checked_form(request)
        name = str(form.get("source", ""))
        spec = spec_named(name)
        if spec is None:
            flash(request, f"no spec for source {name!r}", "error")
        else:
            result = reprocess(spec, store, settings.staging_dir)
            flash(
                request,
                f"{name}: {counted(result.attempted, 'record')} retried, {result.reprocessed:,} now loaded "
                f"({result.inserted} inserted, {result.updated} updated), {result.still_failing} still failing",
            )
        return back(request, "/dead-letters", str(form.get("back", "")))

    async def held_page(request: Request) -> Response:
        return render(request, "held.html", held=held_versions(store))

    async def held_version_page(request: Request) -> Response:
        source_id = request.path_params["source_id"]
        found = held_versions(store, source_id=source_id)
        if not found:
            raise HTTPException(404, "no held version with this id: it may have been released or discarded")
        held = found[0]
        spec = spec_named(held.source)
        page = page_number(request)
        changes, total = pending_changes(store, spec, source_id, page, PAGE_SIZE) if spec else ([], 0)
        return render(
            request,
            "held_version.html",
            held=held,
            spec=spec,
            failed=failed_checks(store, source_id),
            changes=changes,
            total=total,
            page=page,
            limit=PAGE_SIZE,
        )

    async def held_action(request: Request) -> Response:
        form = await checked_form(request)
        source_id = request.path_params["source_id"]
        action, name, reason = str(form.get("action", "")), str(form.get("source", "")), str(form.get("reason", ""))
        who = actor(request)
        spec = spec_named(name)
        try:
            if spec is None:
                raise ValueError(f"no spec for source {name!r}")
            if action == "release":
                published = release(store, spec, source_id, who, reason)
                flash(
                    request,
                    f"{name} version {source_id} released by {who} and published: "
                    f"{counted(published.inserted, 'row')} inserted, {published.updated:,} updated",
                )
            elif action == "discard":
                partition_key = discard(store, spec, source_id, who, reason)
                flash(request, f"{name} {partition_key} discarded by {who}: its staged rows are dropped")
            else:
                raise ValueError(f"unknown action {action!r}")
        except ValueError as error:
            flash(request, str(error), "error")
            # Back to the version while it waits; one already decided has no page of its own.
            return back(request, f"/held/{source_id}" if held_versions(store, source_id=source_id) else "/held")
        return back(request, "/held")

    return Starlette(
        routes=[
            Route("/", sources_page),
            Route("/issues", issues_page),
            Route("/issues/action", issues_action, methods=["POST"]),
            Route("/issues/rematerialize", rematerialize, methods=["POST"]),
            Route("/issues/{issue_id}", record_page),
            Route("/issues/{issue_id}/action", record_action, methods=["POST"]),
            Route("/rules", rules_page),
            Route("/rules/{rule_id:int}/enabled", rule_toggle, methods=["POST"]),
            Route("/dead-letters", dead_letters_page),
            Route("/dead-letters/reprocess", dead_letters_reprocess, methods=["POST"]),
            Route("/held", held_page),
            Route("/held/{source_id:int}", held_version_page),
            Route("/held/{source_id:int}/action", held_action, methods=["POST"]),
            # A warehouse of its own: a scrape waits briefly for a load, the pages as long as it takes.
            Route("/metrics", metrics_endpoint(open_warehouse(settings.warehouse_url, settings.schema))),
            Mount("/api/v1", create_api(settings, store, specs)),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=settings.secret or secrets.token_urlsafe(32),
                session_cookie="harmonizer_dq",
                same_site="strict",
            )
        ],
    )
