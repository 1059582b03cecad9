"""Reading the answers of other systems' servers with a ceiling, and JSON ones with a clear error.

An answer is read into memory whole before it is parsed, so a broken or hostile server (an
endless stream, a gzip bomb, a lying Content-Length) could exhaust a worker: every connector reads
through :func:`read_body`, which stops at a limit and says so. A refusal names what was asked
(``GET /api/v1/dossiers``) and what was wrong, never the body itself (it may hold personal data).
"""

from __future__ import annotations

import json
from typing import Any

import requests

# A page of 50,000 records of a few KB each (the largest page_size a manifest allows) fits with
# room to spare; anything larger is not an answer in any contract here.
MAX_ANSWER_BYTES = 256 * 1024 * 1024
_CHUNK = 64 * 1024


class BadAnswer(ValueError):
    """An answer that cannot be used at all: too large, not JSON, cut short, nested too deep."""


def read_body(response: requests.Response, limit: int, what: str) -> bytes:
    """The body of a response opened with ``stream=True``, decompressed, at most ``limit`` bytes."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        response.close()
        raise BadAnswer(f"{what}: the answer is {int(declared)} bytes, over the limit of {limit} bytes")
    chunks, size = [], 0
    for chunk in response.iter_content(_CHUNK):
        size += len(chunk)
        if size > limit:
            response.close()
            raise BadAnswer(f"{what}: the answer is over the limit of {limit} bytes (stopped reading)")
        chunks.append(chunk)
    return b"".join(chunks)


def json_body(response: requests.Response, limit: int, what: str) -> Any:
    """The JSON value of a response opened with ``stream=True``.

    Bytes that are not UTF-8 become U+FFFD rather than failing the page: the record holding them
    is then refused by the mapping, alone (see connectors.values).
    """
    text = read_body(response, limit, what).decode("utf-8-sig", errors="replace")
    kind = response.headers.get("Content-Type", "no content type")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if _cut_short(text, exc):
            raise BadAnswer(f"{what}: the JSON answer is cut short after {len(text)} characters "
                            f"({exc.msg})") from None
        raise BadAnswer(f"{what}: the answer is not JSON ({kind}): {exc.msg} at line {exc.lineno} "
                        f"column {exc.colno}") from None
    except RecursionError:
        raise BadAnswer(f"{what}: the JSON answer is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise BadAnswer(f"{what}: the JSON answer holds a value that cannot be read: {exc}") from None


def _cut_short(text: str, exc: json.JSONDecodeError) -> bool:
    """Whether the JSON would have been fine had it gone on: told apart from garbage, because a cut
    answer points at the network or a proxy and garbage at the server itself."""
    rest = text[exc.pos:].strip()
    return (not rest or exc.msg.startswith("Unterminated string")
            or (exc.msg.startswith("Invalid \\uXXXX") and len(rest) < 6)
            or any(word.startswith(rest) for word in ("true", "false", "null")))
