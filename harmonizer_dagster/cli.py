"""`harmonizer`: terminal helpers around the warehouse: a summary, data-quality triage, and
starting Dagster processes with secrets from AWS Secrets Manager (the Dagster UI and CLI do
the running)."""

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

import duckdb
import psycopg

from harmonizer_dagster.core.drafting import checked, draft
from harmonizer_dagster.core.secrets import database_login, environment_variables, read_secret, redact, secret_values
from harmonizer_dagster.core.settings import current
from harmonizer_dagster.core.spec import SpecError, load_specs
from harmonizer_dagster.core.triage import (
    ACTIONS,
    ISSUE_COLUMNS,
    Selection,
    act,
    counted,
    escaped,
    list_issues,
    list_rules,
    render,
    render_page,
    shown,
    summarize,
)
from harmonizer_dagster.core.warehouse import Warehouse, open_warehouse
from harmonizer_dagster.core.warehouse.duckdb import DuckDBWarehouse


def opened() -> Warehouse:
    """The warehouse of HARMONIZER_WAREHOUSE_URL. While a load holds a DuckDB file, a command
    waits for it, saying so once on stderr (stdout stays the command's output)."""
    store = open_warehouse(current("HARMONIZER_WAREHOUSE_URL"))
    told: list[str] = []

    def tell(message: str) -> None:
        if not told:
            print(message, file=sys.stderr, flush=True)
            told.append(message)

    store.on_wait = tell
    return store


def summary() -> int:
    """Where the results are, and what each source's files came to."""
    from harmonizer_dagster.core.publishing import held_versions

    store = opened()
    if isinstance(store, DuckDBWarehouse) and not Path(store.path).is_file():
        # Opening it would create an empty one, folder and all: a summary only reads.
        path = Path(store.path).resolve()
        raise FileNotFoundError(f"no warehouse at {path}: nothing loaded yet, or HARMONIZER_WAREHOUSE_URL is wrong")
    location = f"DuckDB file {Path(store.path).resolve()}" if isinstance(store, DuckDBWarehouse) else store.description
    catalog = load_specs(Path(current("HARMONIZER_SOURCES_DIR")), strict=False)
    print(f"Warehouse: {location}, schema {store.schema_name}", flush=True)
    # One transaction: one consistent state, and a DuckDB file opened (or waited for) once.
    with store.transaction():
        rows = store.query(
            "SELECT source_type, partition_key, status, records_in_file, records_imported, records_failed, "
            "records_skipped FROM {schema}.sources ORDER BY source_type, partition_key"
        )
        print(
            f"\n{'source':<20} {'file':<28} {'status':<10} {'in file':>8} {'imported':>8} {'failed':>7} {'skipped':>7}"
        )
        for source, key, status, *counts in rows:
            print(f"{source:<20} {key:<28} {status:<10} " + " ".join(f"{c or 0:>8}" for c in counts))
        held = held_versions(store)
        if held:
            print(f"\n{counted(len(held), 'version')} held by failed blocking checks, not in the tables:")
        for version in held:
            print(f"  {version.source}/{version.partition_key} (id {version.source_id}): {version.held_because}")
        print("\nTables:")
        created = {
            name
            for (name,) in store.query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (store.schema_name,)
            )
        }
        for spec in catalog:
            if spec.name not in created:
                print(f"  {store.schema_name}.{spec.name}: not created yet (no file of it loaded)")
                continue
            total = store.query(f"SELECT count(*) FROM {store.table(spec.name)}")[0][0]
            print(f"  {store.schema_name}.{spec.name}: {total} rows")
        for table in ("data_quality_issues", "failed_records"):
            print(
                f"  {store.schema_name}.{table}: {store.query(f'SELECT count(*) FROM {{schema}}.{table}')[0][0]} rows"
            )
    if catalog.errors:
        raise SpecError.combine(catalog.errors)
    return 0


def held(args: argparse.Namespace) -> int:
    """Versions their blocking checks held out of the tables consumers read, and a steward's
    decision on one: release (publish it as it is) or discard, with who and why recorded."""
    from harmonizer_dagster.core.publishing import discard, held_versions, pending_changes, release

    store = opened()
    store.migrate([])
    if args.held_command == "list":
        versions = held_versions(store, args.source)
        print(f"{'id':>6} {'source':<20} {'file':<28} {'new':>6} {'changed':>8} {'failed':>7}  held because")
        for v in versions:
            print(
                f"{v.source_id:>6} {v.source:<20} {v.partition_key:<28} {v.new_keys:>6} {v.changed_rows:>8} "
                f"{v.records_failed:>7}  {v.held_because}"
            )
        print(f"{counted(len(versions), 'held version')}")
        return 0
    found = held_versions(store, source_id=args.source_id)
    if not found:
        raise ValueError(f"no held version {args.source_id}: `harmonizer held list` shows them")
    version = found[0]
    spec = next(s for s in load_specs(Path(current("HARMONIZER_SOURCES_DIR"))) if s.name == version.source)
    if args.held_command == "show":
        changes, total = pending_changes(store, spec, version.source_id, args.page, args.limit)
        print(f"{version.source}/{version.partition_key} is held: blocking check(s) failed: {version.held_because}")
        print(
            f"Publishing it would write {counted(total, 'row')}: {version.new_keys} new, {version.changed_rows} changed"
        )
        for change in changes:
            key = ", ".join(f"{k}={v}" for k, v in change.key.items())
            values = "; ".join(
                f"{name}: {shown(before)} -> {shown(after)}" for name, (before, after) in change.changes.items()
            )
            print(f"  {change.kind:<7} {key}  {values}")
        return 0
    by = args.by or getpass.getuser()
    if args.held_command == "release":
        published = release(store, spec, version.source_id, by, args.reason)
        print(
            f"released {version.source}/{version.partition_key}: {published.inserted} inserted, "
            f"{published.updated} updated, {published.unchanged} unchanged"
        )
    else:
        discard(store, spec, version.source_id, by, args.reason)
        print(f"discarded {version.source}/{version.partition_key}; its issues stay in the data-quality table")
    return 0


def backup_or_restore(args: argparse.Namespace) -> int:
    from harmonizer_dagster.core import backup

    instance = backup.instance_url() if args.instance else None
    if args.instance and instance is None:
        raise backup.BackupError("--instance needs the PostgreSQL instance's DAGSTER_PG_* variables")
    if args.command == "backup":
        manifest = backup.backup(opened(), args.folder, instance)
        print(f"backed up the {manifest.warehouse} warehouse{' and the instance' * manifest.instance} to {args.folder}")
    else:
        manifest = backup.restore(opened(), args.folder, instance)
        print(f"restored the warehouse{' and the instance' * bool(instance)} as backed up at {manifest.created_at}")
    return 0


def api_key(args: argparse.Namespace) -> int:
    """API keys of the HTTP API: made (the key printed once, on stdout alone), revoked, listed."""
    from harmonizer_dagster.core.api_keys import create_key, list_keys, revoke_key

    store = opened()
    store.migrate([])
    if args.api_key_command == "create":
        token = create_key(store, args.name, args.scope)
        print(token)
        print(
            f"key {args.name} made with scope {', '.join(dict.fromkeys(args.scope))}: copy it now, it is never shown "
            "again (the warehouse keeps only its SHA-256)",
            file=sys.stderr,
        )
    elif args.api_key_command == "revoke":
        if not revoke_key(store, args.name):
            print(f"no active key {args.name}: `harmonizer api-key list` shows them", file=sys.stderr)
            return 1
        print(f"key {args.name} revoked: it is refused from now on")
    else:
        print(f"{'name':<24} {'scopes':<22} {'created':<26} revoked")
        for key in list_keys(store):
            print(f"{key.name:<24} {' '.join(key.scopes):<22} {key.created_at!s:<26} {key.revoked_at or ''}")
    return 0


def check_specs(folder: Path) -> int:
    """Lists every error of every spec in `folder` at once, each with file, field and line, so
    one run finds all there is to fix before the code location is reloaded."""
    catalog = load_specs(folder, strict=False)
    for error in catalog.errors:
        print(error)
    if catalog.errors:
        broken = len({error.file for error in catalog.errors})
        errors, fine = counted(len(catalog.errors), "error"), counted(len(catalog.specs), "spec")
        print(f"{errors} in {counted(broken, 'spec')}; {fine} OK")
        return 1
    print(f"{counted(len(catalog.specs), 'spec')} OK")
    return 0


def _selection(args: argparse.Namespace, status: str | None = "pending") -> Selection:
    return Selection(
        issue_ids=tuple(args.id or ()),
        issue_type=args.type,
        source=args.source,
        partition_key=args.partition,
        field_name=args.field,
        severity=args.severity,
        status=status,
    )


def serve(args: argparse.Namespace) -> int:
    """The triage page (harmonizer_dagster.web) on the warehouse every other process uses."""
    import uvicorn

    from harmonizer_dagster.web.app import Settings, create_app

    uvicorn.run(create_app(Settings.from_environment()), host=args.host, port=args.port, root_path=args.root_path)
    return 0


def status(args: argparse.Namespace) -> int:
    """The loader_status view: the last 7 days' versions, how far each got, and which stalled."""
    from harmonizer_dagster.core.monitoring import loader_status

    store = opened()
    store.migrate([])
    rows = loader_status(store, "STALLED" if args.stalled else None)
    print(
        f"{'source':<20} {'file':<28} {'health':<10} {'processed':>10} {'expected':>10} {'imported':>10} "
        f"{'failed':>8} {'per min':>9}  last heartbeat"
    )
    for row in rows:
        figures = " ".join(
            f"{'' if row[name] is None else row[name]:>{width}}"
            for name, width in (("records_processed", 10), ("records_expected", 10), ("records_imported", 10))
        )
        rate = "" if row["records_per_minute"] is None else f"{row['records_per_minute']:,.0f}"
        print(
            f"{row['source_type']:<20} {row['partition_key']:<28} {row['health_status']:<10} {figures} "
            f"{row['records_failed'] or 0:>8} {rate:>9}  {row['heartbeat_at'] or ''}"
        )
    if not args.stalled:
        from harmonizer_dagster.core.publishing import held_versions

        for held in held_versions(store):
            print(f"held: {held.source}/{held.partition_key} (id {held.source_id}), failed {held.held_because}")
        print_sinks(store)
    return 1 if args.stalled and rows else 0


def print_sinks(store: Warehouse) -> None:
    """Each recent version's place in each sink: its checkpoint, and why its last run failed."""
    from harmonizer_dagster.core.monitoring import sink_status

    sinks = sink_status(store)
    if not sinks:
        return
    print(
        f"\n{'source':<20} {'sink':<28} {'file':<28} {'status':<10} {'produced':>10} {'changes':>10} "
        f"{'dead':>6}  updated"
    )
    for row in sinks:
        print(
            f"{row['source_type']:<20} {row['sink']:<28} {row['partition_key']:<28} {row['status']:<10} "
            f"{row['produced']:>10} {row['changes']:>10} {row['dead_letters']:>6}  {row['updated_at']}"
        )
        if row["status"] == "failed" and row["error_message"]:
            print(f"  {row['error_message']}")


def metrics(args: argparse.Namespace) -> int:
    """`/metrics` on its own, for a machine without the triage page."""
    import uvicorn

    from harmonizer_dagster.web.metrics import create_metrics_app

    store = open_warehouse(current("HARMONIZER_WAREHOUSE_URL"))
    uvicorn.run(create_metrics_app(store), host=args.host, port=args.port)
    return 0


def dq(args: argparse.Namespace) -> int:
    if args.dq_command == "serve":
        return serve(args)
    store = opened()
    if args.dq_command in ("resolve", "disable-rule", "enable-rule"):
        # A warehouse last written by an older version gets the tables and indexes these rely on.
        store.migrate([])
    if args.dq_command == "list":
        selection = _selection(args, None if args.status == "all" else args.status)
        page = list_issues(store, selection, args.page, args.limit)
        if args.format == "json":
            listing = {"total": page.total, "page": page.page, "pages": page.pages, "limit": page.limit}
            print(json.dumps(listing | {"issues": page.rows}))
        elif args.format == "tsv":
            for row in [ISSUE_COLUMNS, *([row[c] for c in ISSUE_COLUMNS] for row in page.rows)]:
                print("\t".join("" if value is None else escaped(str(value)) for value in row))
        else:
            print(render(summarize(store, selection, args.examples)) + "\n\n" + render_page(page))
    elif args.dq_command == "resolve":
        outcome = act(
            store,
            _selection(args),
            args.action,
            args.note,
            specs=load_specs(Path(current("HARMONIZER_SOURCES_DIR"))),
            pad_to_width=args.pad_to_width,
            date_format=args.date_format,
            map_to=args.map_to,
            actor=getpass.getuser(),
        )
        print(outcome.message())
    elif args.dq_command == "rules":
        for rule in list_rules(store):
            print(
                f"{rule.rule_id:>5} {'on ' if rule.enabled else 'off'} {rule.source}.{rule.field_name}: "
                f"{rule.kind} {rule.params} ({counted(rule.fixed, 'value')} fixed)"
            )
    elif args.dq_command in ("disable-rule", "enable-rule"):
        if not store.set_rule_enabled(args.rule_id, args.dq_command == "enable-rule"):
            print(f"no rule {args.rule_id}", file=sys.stderr)
            return 1
        print(f"rule {args.rule_id} {'enabled' if args.dq_command == 'enable-rule' else 'disabled'}")
    return 0


# The Dagster instance file (dagster.yaml) reads its PostgreSQL login from these variables.
INSTANCE_LOGIN_VARIABLES = {
    "host": "DAGSTER_PG_HOST",
    "port": "DAGSTER_PG_PORT",
    "username": "DAGSTER_PG_USER",
    "password": "DAGSTER_PG_PASSWORD",
    "dbname": "DAGSTER_PG_DB",
}


def with_secrets(command: list[str]) -> int:
    """Replaces this process with `command`, adding to its environment what AWS Secrets Manager
    holds: the instance's PostgreSQL login (HARMONIZER_INSTANCE_SECRET_ID, RDS-style JSON; the
    fields it has replace their DAGSTER_PG_* variables) and further variables such as API keys
    (HARMONIZER_ENV_SECRET_ID, JSON of names to values). The values are kept in no file and
    printed nowhere. With neither set, `command` runs as is."""
    if not command:
        print("with-secrets: name the command to run after --", file=sys.stderr)
        return 2
    instance_secret = os.environ.get("HARMONIZER_INSTANCE_SECRET_ID", "").strip()
    env_secret = os.environ.get("HARMONIZER_ENV_SECRET_ID", "").strip()
    env = dict(os.environ)
    if instance_secret or env_secret:
        from botocore.exceptions import BotoCoreError, ClientError
        from dagster_aws.secretsmanager.secrets import construct_secretsmanager_client

        client = construct_secretsmanager_client(
            max_attempts=5,
            region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            endpoint_url=os.environ.get("HARMONIZER_SECRETS_ENDPOINT_URL") or None,
        )
        try:
            if instance_secret:
                login = database_login(read_secret(client, instance_secret))
                env |= {INSTANCE_LOGIN_VARIABLES[field]: value for field, value in login.items()}
            if env_secret:
                env |= environment_variables(read_secret(client, env_secret))
        except (ValueError, BotoCoreError, ClientError) as error:
            # botocore's messages name the secret and the failure, never its value.
            print(f"with-secrets: {error}", file=sys.stderr)
            return 2
    try:
        os.execvpe(command[0], command, env)
    except OSError as error:
        print(f"with-secrets: cannot run {command[0]}: {error.strerror}", file=sys.stderr)
        return 2


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", action="append", help="an issue id (repeatable)")
    parser.add_argument("--type", help="issue type, e.g. invalid_zip_code")
    parser.add_argument("--source", help="source name")
    parser.add_argument("--partition", help="file version (partition key)")
    parser.add_argument("--field", help="canonical column name")
    parser.add_argument("--severity", choices=("error", "warning"))


# Failures a person can act on from their message alone: no traceback unless asked for.
EXPECTED_ERRORS = (OSError, ValueError, duckdb.Error, psycopg.Error)


def init_source(file: Path, name: str | None, output: Path | None) -> int:
    """Drafts a spec from a sample file; the draft is checked as `check-specs` checks a spec."""
    if not file.is_file():
        raise FileNotFoundError(f"no file {file}")
    result = draft(file, name)
    checked(result.text, str(output or f"{file.name} draft"))
    for note in result.notes:
        print(note, file=sys.stderr)
    if output is None:
        sys.stdout.write(result.text)
        return 0
    if output.exists():
        raise FileExistsError(f"{output} exists: choose another path, or remove it first")
    output.write_text(result.text, encoding="utf-8")
    print(f"wrote {output}: read it, correct what it guessed, then `harmonizer check-specs`", file=sys.stderr)
    return 0


def report(command: str, error: Exception) -> None:
    """Prints a failure on one line (a spec error: a line per problem), passwords masked."""
    if isinstance(error, SpecError):
        lines = str(error).splitlines()
    else:
        lines = [next(iter(str(error).strip().splitlines()), type(error).__name__)]
        if not isinstance(error, EXPECTED_ERRORS):
            lines = [f"unexpected {type(error).__name__}: {lines[0]} (rerun with --verbose for the traceback)"]
    secrets = secret_values(os.environ)
    for line in lines:
        print(f"harmonizer {command}: {redact(line, secrets)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harmonizer", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="on failure, show the full traceback")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("summary", help="print where the results are and what each loaded file came to")
    check = commands.add_parser(
        "check-specs", help="validate the source specs, listing every error with its file, field and line"
    )
    check.add_argument(
        "folder", nargs="?", type=Path, help="the folder of specs (default: HARMONIZER_SOURCES_DIR, else the shipped)"
    )
    init = commands.add_parser(
        "init-source",
        help="draft a source spec from a sample file: the spec on stdout (or -o), what was guessed and why on stderr",
    )
    init.add_argument("file", type=Path, help="a sample file of the source (csv, json, ndjson, parquet, xlsx)")
    init.add_argument("--name", help="the source's name (default: from the file name)")
    init.add_argument("-o", "--output", type=Path, help="write the spec here (a sources folder's NAME.yaml)")
    dq_parser = commands.add_parser("dq", help="data-quality triage")
    dq_commands = dq_parser.add_subparsers(dest="dq_command", required=True)
    listing = dq_commands.add_parser(
        "list", help="issues grouped by type (counts, distinct examples), then the issues themselves, a page at a time"
    )
    _add_selection(listing)
    listing.add_argument(
        "--status", default="pending", help="pending (default), resolved, ignored, auto_fix, ... or all"
    )
    listing.add_argument("--examples", type=int, default=3, help="distinct example values per group")
    listing.add_argument("--limit", type=int, default=50, help="issues per page (default 50)")
    listing.add_argument("--page", type=int, default=1, help="which page of issues to show (default 1)")
    listing.add_argument(
        "--format", choices=("table", "tsv", "json"), default="table", help="tsv and json: the page of issues only"
    )
    resolve = dq_commands.add_parser("resolve", help="resolve, ignore or fix the selected pending issues")
    _add_selection(resolve)
    resolve.add_argument("--action", required=True, choices=sorted(ACTIONS))
    resolve.add_argument("--note", default="")
    resolve.add_argument("--pad-to-width", type=int, help="auto_fix: left-pad digit values with zeros")
    resolve.add_argument("--date-format", help="auto_fix: the strptime format dates arrive in")
    resolve.add_argument("--map-to", help="auto_fix: replace the invalid values; manual_fix: the corrected value")
    dq_commands.add_parser("rules", help="list transformation rules")
    for name in ("disable-rule", "enable-rule"):
        toggle = dq_commands.add_parser(name, help=f"{name.split('-')[0]} a transformation rule")
        toggle.add_argument("rule_id", type=int)
    web = dq_commands.add_parser(
        "serve", help="serve the triage page (grouped issues, records, rules, dead letters), /metrics and the HTTP API"
    )
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback, behind the proxy)")
    web.add_argument("--port", type=int, default=8090)
    web.add_argument(
        "--root-path",
        default=current("HARMONIZER_DQ_ROOT_PATH"),
        help="the path prefix the proxy serves the page under, e.g. /dq (default: HARMONIZER_DQ_ROOT_PATH)",
    )
    held_parser = commands.add_parser(
        "held", help="versions held out of the tables by failed blocking checks: list, show, release, discard"
    )
    held_commands = held_parser.add_subparsers(dest="held_command", required=True)
    held_list = held_commands.add_parser("list", help="every held version, with the checks it failed")
    held_list.add_argument("--source", help="source name")
    held_show = held_commands.add_parser("show", help="what publishing a held version would change, a page at a time")
    held_show.add_argument("source_id", type=int)
    held_show.add_argument("--limit", type=int, default=50, help="rows per page (default 50)")
    held_show.add_argument("--page", type=int, default=1, help="which page to show (default 1)")
    for name, what in (("release", "publish a held version as it is"), ("discard", "drop a held version")):
        decide = held_commands.add_parser(name, help=f"{what}; who and why are recorded")
        decide.add_argument("source_id", type=int)
        decide.add_argument("--reason", required=True, help="why: kept with the decision")
        decide.add_argument("--by", help="who decides (default: the login name)")
    for name, what in (
        ("backup", "back up the warehouse into a new folder (a DuckDB file while loads may run: they wait)"),
        ("restore", "put the warehouse back as a backup folder holds it (stop loads first)"),
    ):
        saving = commands.add_parser(name, help=what)
        saving.add_argument("folder", type=Path)
        saving.add_argument(
            "--instance", action="store_true", help="the PostgreSQL Dagster instance too (DAGSTER_PG_* variables)"
        )
    keys_parser = commands.add_parser("api-key", help="API keys of the HTTP API (/api/v1): create, revoke, list")
    key_commands = keys_parser.add_subparsers(dest="api_key_command", required=True)
    create = key_commands.add_parser("create", help="make a key and print it, once")
    create.add_argument("name", help="who the key acts as: its writes are recorded under this name")
    create.add_argument(
        "--scope", action="append", required=True, choices=("upload", "read", "triage"), help="repeatable"
    )
    revoke = key_commands.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("name")
    key_commands.add_parser("list", help="every key, revoked ones too (never the keys themselves)")
    status_parser = commands.add_parser(
        "status", help="the loader_status view: each recent version's status, progress and health (STALLED)"
    )
    status_parser.add_argument("--stalled", action="store_true", help="only stalled versions; exit 1 if any")
    metrics_parser = commands.add_parser("metrics", help="Prometheus metrics")
    metrics_commands = metrics_parser.add_subparsers(dest="metrics_command", required=True)
    metrics_serve = metrics_commands.add_parser("serve", help="serve GET /metrics without the triage page")
    metrics_serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    metrics_serve.add_argument("--port", type=int, default=9108)
    secrets = commands.add_parser(
        "with-secrets",
        help="run a Dagster process (webserver, daemon, code server) with the instance's PostgreSQL login "
        "and API keys from AWS Secrets Manager: harmonizer with-secrets -- dagster-daemon run ...",
    )
    secrets.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "summary":
            return summary()
        if args.command == "check-specs":
            return check_specs(args.folder or Path(current("HARMONIZER_SOURCES_DIR")))
        if args.command == "status":
            return status(args)
        if args.command == "held":
            return held(args)
        if args.command == "api-key":
            return api_key(args)
        if args.command == "metrics":
            return metrics(args)
        if args.command == "init-source":
            return init_source(args.file, args.name, args.output)
        if args.command in ("backup", "restore"):
            return backup_or_restore(args)
        if args.command == "with-secrets":
            return with_secrets(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
        return dq(args)
    except Exception as error:
        if args.verbose:
            raise
        report(args.command, error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
