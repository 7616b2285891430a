"""Secrets kept in AWS Secrets Manager: database logins (a plain URL, JSON with a `url`, or the
JSON that RDS writes: username, password, and optionally host, port, dbname) and environment
variables (JSON of names to values, for API keys such as the Slack webhook). Secret values
are never logged."""

import json
import urllib.parse
from typing import Any

LOGIN_FIELDS = ("username", "password", "host", "port", "dbname")
# What a secret may set: the project's settings and the instance's login, nothing that changes
# which code runs (PATH, PYTHONPATH, LD_PRELOAD, ...).
ALLOWED_VARIABLE_PREFIXES = ("HARMONIZER_", "DAGSTER_PG_")


def read_secret(client: Any, secret_id: str) -> str:
    """The secret's current string value; `client` is a boto3 Secrets Manager client."""
    value = client.get_secret_value(SecretId=secret_id).get("SecretString")
    if value is None:
        raise ValueError(f"secret {secret_id} holds binary data, not text")
    return value


def _json_object(value: str) -> dict[str, Any] | None:
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def database_login(value: str) -> dict[str, str]:
    """The RDS-style fields the secret holds (at least username and password); ValueError for
    anything else, naming no value."""
    data = _json_object(value)
    if data is None or not {"username", "password"} <= data.keys():
        raise ValueError("the secret is not RDS-style JSON with at least a username and a password")
    return {field: str(data[field]) for field in LOGIN_FIELDS if field in data}


def database_url(value: str) -> str:
    """A PostgreSQL URL from any of the three forms."""
    data = _json_object(value)
    if data is None:
        return value.strip()
    if "url" in data:
        return data["url"]
    login = database_login(value)
    if "host" not in login:
        raise ValueError("the secret names no host")
    user, password = (urllib.parse.quote(login[k], safe="") for k in ("username", "password"))
    return f"postgresql://{user}:{password}@{login['host']}:{login.get('port', 5432)}/{login.get('dbname', 'postgres')}"


def environment_variables(value: str) -> dict[str, str]:
    """The variables a secret holds as a JSON object of names to values."""
    data = _json_object(value)
    if data is None:
        raise ValueError("the secret is not a JSON object of environment variable names to values")
    refused = sorted(name for name in data if not name.startswith(ALLOWED_VARIABLE_PREFIXES))
    if refused:
        allowed = " or ".join(ALLOWED_VARIABLE_PREFIXES)
        raise ValueError(f"the secret names variables not starting with {allowed}: {', '.join(refused)}")
    return {name: str(variable) for name, variable in data.items()}
