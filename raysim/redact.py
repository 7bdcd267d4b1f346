"""Mask secrets in configs, records and log lines before they are written or printed.

Two rules, deliberately narrow so that configs and metrics pass unchanged:

- by key: the value under a key that names a secret (`api_key`, `WANDB_API_KEY`, `wandb.api_key`,
  `db.password`, `auth_token`, `aws_secret_access_key`, `apiKey`, ...) becomes "***". A key names a
  secret when one of its parts (split at `.`, `_`, `-` and camelCase) is token, secret, password,
  passwd, credential(s), auth or authorization, or two neighbouring parts are api+key, private+key or
  access+key. `tokens` (the model's latent token count) and `key` alone are not secrets. None, booleans
  and empty strings are kept: they hold no secret and say that none was set. A mapping or list under such
  a key is a section, not a secret (`auth: {ssh_user: ubuntu}` in a Ray cluster config): its entries are
  judged one by one.
- by value: anywhere in a string, a W&B API key (40 hex characters, or an on-prem key: a short prefix,
  a dash and 40+ letters, digits or underscores, the format wandb's own `check_api_key` accepts), an AWS
  access key id (AKIA/ASIA + 16), a `Bearer` token (8+ characters) and the password of a
  `scheme://user:password@host` URL are masked. An AWS secret access key has no shape of its own: it is
  found by its name only (`AWS_SECRET_ACCESS_KEY=...`, `"secret_key": "..."`), as is any other password.

A git commit is 40 hex characters too: under a key that names a commit (`commit`, `git_commit`, `sha`,
`git_sha`, `revision`) it is kept, because it is an identifier that makes a run reproducible, not a
secret; anywhere else (a log line, an unknown key) 40 hex characters are masked, as they may be a key.
"""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

MASK = "***"

_SECRET_PARTS = {"token", "secret", "secrets", "password", "passwd", "credential", "credentials",
                 "auth", "authorization", "apikey", "apikeys", "privatekey", "accesskey"}
_SECRET_PAIRS = {(first, key) for first in ("api", "private", "access") for key in ("key", "keys")}
_COMMIT_KEYS = {"commit", "git_commit", "gitcommit", "commit_sha", "sha", "git_sha", "revision", "git_revision"}

_HEX40 = r"(?<![0-9A-Za-z_])[0-9a-fA-F]{40}(?![0-9A-Za-z_])"
_VALUE_PATTERNS = [
    # W&B on-prem keys: `<prefix>-<secret of 40+ word characters>` (wandb.sdk.lib.wbauth.validation)
    (re.compile(r"(?<![\w-])[A-Za-z][A-Za-z0-9]{0,15}-\w{40,}(?![\w-])"), MASK),
    (re.compile(_HEX40), MASK),  # legacy W&B keys (and anything else shaped like one)
    (re.compile(r"(?<![0-9A-Z])(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])"), MASK),  # AWS access key id
    (re.compile(r"(?i)\b(Bearer)\s+[A-Za-z0-9\-._~+/]{8,}=*"), rf"\1 {MASK}"),  # HTTP bearer tokens
    (re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]+):[^\s@]+@"), rf"\1:{MASK}@"),  # scheme://user:pw@
]
# `NAME=value`, `NAME: value`, `"name": "value"` in free text, where NAME names a secret
_NAME = re.compile(r"""(?<![\w.\-])([A-Za-z_][\w.\-]*)(["']?[ \t]*[:=][ \t]*["']?)""")
_VALUE = re.compile(r"""[^\s"',;}&]+""")
_QUOTED = {'"': re.compile(r'[^"\n]*'), "'": re.compile(r"[^'\n]*")}


def _parts(key: str) -> list[str]:
    """`wandb.apiKey` -> ["wandb", "api", "key"]: split at separators and camelCase humps, lowercased."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)
    return [p for p in re.split(r"[._\-\s]+", spaced.lower()) if p]


def is_secret_key(key: Any) -> bool:
    """Whether a mapping key names a secret (see the module docstring)."""
    if not isinstance(key, str):
        return False
    parts = _parts(key)
    if any(p in _SECRET_PARTS for p in parts):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(parts))


def _is_commit_key(key: Any) -> bool:
    return isinstance(key, str) and "_".join(_parts(key)) in _COMMIT_KEYS


def redact_text(text: str) -> str:
    """`text` with credential-shaped values and the values of secret-named assignments masked."""
    if not isinstance(text, str):
        return text

    for pattern, replacement in _VALUE_PATTERNS:
        text = pattern.sub(replacement, text)
    pieces, pos = [], 0
    for name in _NAME.finditer(text):  # names only: a value never hides the next name from the search
        if name.start() < pos or not is_secret_key(name[1]):
            continue
        quote = name[2][-1] if name[2][-1] in "\"'" else None
        value = (_QUOTED[quote] if quote else _VALUE).match(text, name.end())
        if value is None or value[0] in ("", MASK) or value[0].lower() == "bearer":  # "Bearer ***": masked above
            continue
        pieces += [text[pos : name.end()], MASK]
        pos = value.end()
    return "".join([*pieces, text[pos:]])


def _hides(value: Any) -> bool:
    """Whether a value under a secret-named key holds something to hide (not None, a flag or "")."""
    return value is not None and not isinstance(value, bool) and value != ""


def _under_secret_key(value: Any) -> Any:
    if isinstance(value, dict):  # a section: its entries are judged by their own names
        return redact(value)
    if isinstance(value, (list, tuple)):  # a list of secrets (or of sections)
        items = [_under_secret_key(v) if isinstance(v, (dict, list, tuple)) else MASK if _hides(v) else v
                 for v in value]
        return type(value)(items)
    return MASK if _hides(value) else value


def redact(obj: Any) -> Any:
    """A deep copy of dicts/lists/tuples/strings with secrets masked; other values copied unchanged."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if is_secret_key(key):
                out[key] = _under_secret_key(value)
            elif isinstance(value, str) and _is_commit_key(key) and re.fullmatch(r"[0-9a-fA-F]{7,40}", value):
                out[key] = value
            else:
                out[key] = redact(value)
        return out
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return copy.deepcopy(obj)
