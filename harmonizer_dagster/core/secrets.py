"""Secrets kept in AWS Secrets Manager: database logins (a plain URL, JSON with a `url`, or the
JSON that RDS writes: username, password, and optionally host, port, dbname) and environment
variables (JSON of names to values, for API keys such as the Slack webhook). Secret values
are never logged."""

import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
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


def kafka_login(value: str) -> tuple[str, str]:
    """The SASL username and password a secret holds as JSON (`username`, `password`); ValueError
    for anything else, naming no value."""
    data = _json_object(value)
    if data is None or not {"username", "password"} <= data.keys():
        raise ValueError("the secret is not JSON with a username and a password")
    return str(data["username"]), str(data["password"])


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


# The password in user:password@ of any URL, and in libpq's password=... keyword strings.
URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:@/\s]*:)[^@\s]+@", re.IGNORECASE)
KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&;]+)", re.IGNORECASE)
# Environment variables whose whole value is a secret.
SECRET_NAME_PARTS = ("PASSWORD", "TOKEN", "SECRET_ACCESS_KEY", "WEBHOOK")
# Shorter values are not masked: blanking every "ab" would make a message unreadable.
MIN_SECRET_LENGTH = 4


def secret_values(environ: Mapping[str, str]) -> set[str]:
    """What a message must not show of the environment: the passwords in its URLs, as written
    and decoded (drivers quote fragments of a malformed URL), and variables named like secrets."""
    values = set()
    for name, value in environ.items():
        if any(part in name.upper() for part in SECRET_NAME_PARTS):
            values.add(value)
        if "://" in value:
            try:
                password = urllib.parse.urlsplit(value.strip()).password
            except ValueError:
                continue
            if password:
                values |= {password, urllib.parse.unquote(password)}
    return {value for value in values if len(value) >= MIN_SECRET_LENGTH}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every URL's password, libpq's `password=...` and the given secret values
    masked, for messages printed where anyone may read or paste them."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = URL_PASSWORD.sub(r"\g<head>***@", text)
    return KEYWORD_PASSWORD.sub(r"\g<head>***", text)
