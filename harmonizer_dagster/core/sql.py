"""Quoting for SQL text built from specs and file headers: never paste an identifier raw."""


def quote_ident(name: str) -> str:
    if "\x00" in name:
        raise ValueError("identifiers cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    if "\x00" in value:
        raise ValueError("string literals cannot contain NUL")
    return "'" + value.replace("'", "''") + "'"
