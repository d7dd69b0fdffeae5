"""The mini-program's committed API description stays current: client/openapi.json is
what the gateway serves at /openapi.json today, and client/pond-api.d.ts (made from
it by `make client` with npm's openapi-typescript) names every operation and schema
in it. Regenerate both with `make client`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.openapi import document, render

CLIENT = Path(__file__).resolve().parents[2] / "client"


def test_the_committed_openapi_document_is_the_gateways():
    committed = (CLIENT / "openapi.json").read_text(encoding="utf-8")
    assert committed == render(document()), "client/openapi.json is stale: run `make client`"


def test_the_committed_typescript_types_cover_the_document():
    doc = json.loads((CLIENT / "openapi.json").read_text(encoding="utf-8"))
    types = (CLIENT / "pond-api.d.ts").read_text(encoding="utf-8")
    operations = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    typed = set(re.findall(r'operations\["(\w+)"\]', types))
    assert operations == typed, "client/pond-api.d.ts is stale: run `make client`"
    for name in doc["components"]["schemas"]:
        assert re.search(rf"^\s+{re.escape(name)}: {{", types, re.M), name
    for path in doc["paths"]:
        assert f'"{path}": {{' in types, path
