"""Secrets never enter what a run stores: refuse them where they would be stored, mask them where a config is shown.

A `CollectConfig` is the flow's parameter, so the Prefect database and UI keep it, and the manifest copies it. A
credential inside it (in a URL's `user:password@`, a token in a URL's query, a key in `--storage-options`) would be
written to both. `refuse_secrets(config)` therefore refuses such a config up front with a message saying where the
credential belongs instead (`--api-key-env`, the AWS environment variables or a profile); `redacted(config)` and
`redacted_dump(config)` mask anything credential-like, for every place a config is stored, logged or handed to
Prefect, as a second line of defence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel

from rollouts.errors import ConfigError
from rollouts.places import is_url

ModelT = TypeVar("ModelT", bound=BaseModel)

MASK = "***"

# Storage option keys that carry credentials in s3fs, gcsfs, adlfs and fsspec's HTTP filesystems.
_SECRET_KEY = re.compile(
    r"(secret|token(?!_source)|passw|credential|account_key|connection_string|private_key|api[-_]?key|^sas|auth|^key$|"
    r"access_key|^sig$|signature$)",  # signature$: X-Amz-Signature, X-Goog-Signature of presigned URLs
    re.IGNORECASE,
)
# Values of such keys that name a credential source rather than hold one (gcsfs `token`, s3fs `anon`-like modes).
_NOT_SECRET_VALUES = frozenset({"anon", "google_default", "cache", "cloud", "browser"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def secret_key(name: str) -> bool:
    """Whether an option or query-parameter name holds a credential."""
    return bool(_SECRET_KEY.search(name))


def url_secrets(url: str) -> list[str]:
    """What in `url` is a credential: its `user:password@` part and query parameters named like keys or tokens."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = []
    if parts.username is not None or parts.password is not None:
        found.append("user:password@")
    found += [f"?{name}=" for name, _ in parse_qsl(parts.query, keep_blank_values=True) if secret_key(name)]
    return found


def redact_url(url: str) -> str:
    """`url` with its credentials masked (the host, path and other query parameters kept)."""
    if not url_secrets(url):
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = (f"{MASK}@" if parts.username is not None or parts.password is not None else "") + host
    if parts.port is not None:
        netloc += f":{parts.port}"
    query = urlencode(
        [(k, MASK if secret_key(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*"
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _holds_secret(value: Any) -> bool:
    if value in (None, "", False, True):
        return False
    return not (isinstance(value, str) and value in _NOT_SECRET_VALUES)


def _option_secrets(value: Any, path: str) -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if secret_key(str(key)) and _holds_secret(item):
                found.append(where)
            else:
                found += _option_secrets(item, where)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found += _option_secrets(item, f"{path}[{index}]")
    elif isinstance(value, str) and is_url(value) and url_secrets(value):
        found.append(path)
    return found


def secret_option_keys(options: Any) -> list[str]:
    """Where in `--storage-options`-like data a credential is held, as dotted keys (`client_kwargs.endpoint_url`)."""
    return _option_secrets(options, "")


def refuse_url_credentials(url: str, field: str, instead: str) -> str:
    """`url` unchanged, or a ValueError naming its credentials and where they belong (`instead`): for block fields,
    which Prefect stores and shows in the clear."""
    found = url_secrets(url)
    if found:
        raise ValueError(f"{field} {redact_url(url)} carries credentials ({', '.join(found)}); {instead}")
    return url


def _mask_mapping(value: dict[Any, Any]) -> dict[Any, Any]:
    return {k: (MASK if secret_key(str(k)) and _holds_secret(v) else _mask(v)) for k, v in value.items()}


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return _mask_mapping(value)
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, str) and is_url(value):
        return redact_url(value)
    return value


def secret_problems(config: Any) -> list[str]:
    """Each place a `CollectConfig` holds a credential, as a sentence saying where to put it instead."""
    problems = []
    urls = {"--model-url": config.endpoint.model_url, "INPUT": config.input, "--out": config.storage.out}
    urls.update({f"--remote-env {name}": url for name, url in config.environments.remote_env.items()})
    for option, address in (
        ("--dask-address", config.concurrency.dask_address),
        ("--ray-address", config.concurrency.ray_address),
    ):
        if address:
            urls[option] = address
    for option, url in urls.items():
        found = url_secrets(url)
        if found:
            hint = (
                " put the key in an environment variable and name it with --api-key-env"
                if option == "--model-url"
                else " use the service's own credential settings"
            )
            problems.append(
                f"{option} {redact_url(url)} carries credentials ({', '.join(found)}): flow parameters "
                f"and the manifest would keep them;{hint}"
            )
    keys = secret_option_keys(config.storage.options)
    if keys:
        problems.append(
            f"--storage-options holds credentials ({', '.join(keys)}): flow parameters and the manifest "
            "would keep them; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or "
            '{"profile": NAME}) in the environment instead'
        )
    name = config.endpoint.api_key_env
    if name and not _ENV_NAME.match(name):
        problems.append(
            "--api-key-env takes the NAME of an environment variable (letters, digits, '_'), not the "
            "key itself: export MY_KEY=... and pass --api-key-env MY_KEY"
        )
    return problems


def refuse_secrets(config: Any) -> None:
    """Raise a ConfigError naming every credential the config would store; call it before the config is stored."""
    problems = secret_problems(config)
    if problems:
        raise ConfigError("; ".join(problems))


def redacted_dump(config: BaseModel, **dump: Any) -> dict[str, Any]:
    """`config.model_dump(mode="json")` with every credential-like value masked."""
    return _mask_mapping(config.model_dump(mode="json", **dump))


def redacted(config: ModelT) -> ModelT:
    """A copy of the config with every credential-like value masked (same type, validated again)."""
    return type(config).model_validate(redacted_dump(config))


# Request headers that never carry a credential; every other header value sent to a server counts as a secret.
_PLAIN_HEADERS = frozenset(
    {"content-type", "accept", "accept-encoding", "user-agent", "content-length", "connection", "host"}
)
_MIN_SECRET = 6  # shorter values would mask ordinary words in a message


def header_secrets(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The credential-like values among request headers: whole values, and the token of `Bearer <token>`."""
    found: list[str] = []
    for name, value in headers:
        if name.lower() in _PLAIN_HEADERS:
            continue
        found.append(value)
        scheme, _, token = value.partition(" ")
        if token and scheme.lower() in ("bearer", "basic", "token"):
            found.append(token)
    return [s for s in found if len(s) >= _MIN_SECRET]


def option_secrets(options: Any) -> list[str]:
    """Credential values held in `--storage-options`-like dicts (keys named like secrets, at any depth)."""
    found: list[str] = []
    if isinstance(options, dict):
        for key, value in options.items():
            if secret_key(str(key)) and isinstance(value, str) and _holds_secret(value):
                found.append(value)
            else:
                found += option_secrets(value)
    elif isinstance(options, (list, tuple)):
        for value in options:
            found += option_secrets(value)
    return [s for s in found if len(s) >= _MIN_SECRET]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret masked, as written and as JSON escapes it (a server echoing headers in JSON)."""
    for secret in sorted(set(secrets), key=len, reverse=True):  # longest first: "Bearer k" before "k"
        text = text.replace(secret, MASK)
        escaped = json.dumps(secret)[1:-1]
        if escaped != secret:
            text = text.replace(escaped, MASK)
    return text
