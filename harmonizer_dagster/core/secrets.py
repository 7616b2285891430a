"""Secrets kept in AWS Secrets Manager: database logins (a plain URL, JSON with a `url`, or the
JSON that RDS writes: username, password, host, port, dbname) and environment variables (JSON
of names to values, for API keys such as the Slack webhook). Secret values are never logged."""

import json
import re
import urllib.parse
from typing import Any

LOGIN_FIELDS = ("username", "password", "host", "port", "dbname")
VARIABLE_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def read_secret(client: Any, secret_id: str) -> str:
    """The secret's current string value; `client` is a boto3 Secrets Manager client."""
    return client.get_secret_value(SecretId=secret_id)["SecretString"]


def database_login(value: str) -> dict[str, str]:
    """The RDS-style fields of a secret; ValueError for anything else, naming no value."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not {"username", "password", "host"} <= data.keys():
        raise ValueError("the secret is not RDS-style JSON with username, password and host")
    return {"port": "5432", "dbname": "postgres"} | {k: str(data[k]) for k in LOGIN_FIELDS if k in data}


def database_url(value: str) -> str:
    """A PostgreSQL URL from any of the three forms."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        return value.strip()
    if isinstance(data, dict) and "url" in data:
        return data["url"]
    login = database_login(value)
    user, password = (urllib.parse.quote(login[k], safe="") for k in ("username", "password"))
    return f"postgresql://{user}:{password}@{login['host']}:{login['port']}/{login['dbname']}"


def environment_variables(value: str) -> dict[str, str]:
    """The variables a secret holds as a JSON object of names to values."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise ValueError("the secret is not a JSON object of environment variable names to values")
    bad = sorted(name for name in data if not VARIABLE_NAME.fullmatch(name))
    if bad:
        raise ValueError(f"the secret names invalid environment variables: {', '.join(bad)}")
    return {name: str(variable) for name, variable in data.items()}
