"""Which errors are passing faults of the network or a server, worth trying again.

A load talks to S3 and to the warehouse; a dropped connection, a restarting server, a
throttled request or a lost lock race says nothing about the file, and the same work a few
seconds later succeeds. Everything else (a bad file, a bad spec, a full disk, a bug) fails
the same way every time, so retrying it only delays the message.
"""

from __future__ import annotations

import builtins
import sys

import duckdb

# SQLSTATEs of a passing condition: the connection (class 08), a serialization failure or
# deadlock the server rolled back, a lock not available, a server shutting down or starting
# (57P01-57P03), too many connections.
TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300")
# S3 error codes that ask the client to slow down or come back.
TRANSIENT_S3_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "TooManyRequestsException",
    }
)
# What DuckDB says when another process holds the file, or a concurrent commit won.
TRANSIENT_DUCKDB_MESSAGES = ("Could not set lock on file", "Conflicting lock is held")


def is_transient(exc: BaseException) -> bool:
    """Whether the error, or one it was raised from, is a passing fault of the network or a server."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_itself(current):
            return True
        current = current.__cause__
    return False


def _transient_itself(exc: BaseException) -> bool:
    if isinstance(exc, builtins.ConnectionError | TimeoutError) or _transient_aws(exc):
        return True
    if isinstance(exc, duckdb.Error):
        conflict = isinstance(exc, duckdb.TransactionException) and "Conflict" in str(exc)
        return conflict or any(m in str(exc) for m in TRANSIENT_DUCKDB_MESSAGES)
    # Errors of a library are only raised where it is loaded: a process that never imported
    # psycopg (a DuckDB warehouse) or botocore (no S3, no Secrets Manager) has none of them,
    # and need not pay for importing it to say so.
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        # No SQLSTATE: the client lost the server (closed connection, refused, reset).
        state = exc.sqlstate
        return state is None or state.startswith(TRANSIENT_SQLSTATES)
    return False


def _transient_aws(exc: BaseException) -> bool:
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is None:
        return False
    if isinstance(exc, botocore.ConnectionError | botocore.HTTPClientError | botocore.IncompleteReadError):
        return True
    if isinstance(exc, botocore.ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return error.get("Code") in TRANSIENT_S3_CODES or status == 429 or status >= 500
    return False
