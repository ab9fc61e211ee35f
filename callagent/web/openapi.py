"""``GET /openapi.json``: the OpenAPI description of the HTTP API.

``docs/openapi.yaml`` is the source. The package ships its JSON rendering,
``callagent/data/openapi.json``, and serves that: the runtime needs no YAML parser and
converts nothing. After editing the YAML, regenerate the JSON (needs PyYAML, which the
``test`` extra brings)::

    python -m callagent.web.openapi

``tests/test_openapi.py`` fails while the two differ. The served document carries the
running server's text limit (``CALLAGENT_MAX_TEXT_CHARS``) instead of the default.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from .keys import SETTINGS

RESOURCE = "openapi.json"
SOURCE = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"


@functools.cache
def packaged() -> dict[str, Any]:
    """The shipped document, exactly as in ``callagent/data/openapi.json``."""
    data: dict[str, Any] = orjson.loads(resources.files("callagent.data").joinpath(RESOURCE).read_bytes())
    return data


def document(max_text_chars: int) -> dict[str, Any]:
    """The document as a server with this text limit serves it."""
    doc = copy.deepcopy(packaged())
    doc["components"]["schemas"]["Text"]["maxLength"] = max_text_chars
    return doc


@functools.cache
def _encoded(max_text_chars: int) -> bytes:
    return orjson.dumps(document(max_text_chars))


async def serve(request: web.Request) -> web.Response:
    body = _encoded(request.app[SETTINGS].max_text_chars)
    return web.Response(body=body, content_type="application/json")


def render(doc: dict[str, Any]) -> str:
    """The JSON text of ``callagent/data/openapi.json`` for a document loaded from the YAML."""
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def main() -> int:
    """Regenerate ``callagent/data/openapi.json`` from ``docs/openapi.yaml`` (a source checkout)."""
    import yaml

    doc = yaml.safe_load(SOURCE.read_text(encoding="utf-8"))
    target = Path(__file__).resolve().parents[1] / "data" / RESOURCE
    target.write_text(render(doc), encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
