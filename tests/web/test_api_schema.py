"""The API answers are serialised straight from the index (no per-request pydantic pass): every
answer the test repositories give must still be exactly what its documented ``response_model``
describes: it validates, and validating then dumping it changes nothing (no missing field
filled in by a default, no extra field, no value coerced)."""

from __future__ import annotations

import httpx
import pytest
from pydantic import TypeAdapter

from pycvmfs.web import models
from web.conftest import FQRN, PLAT

_PORTAL_PATHS = [
    ("/api/repositories", list[models.Repository]),
    (f"/api/repositories/{FQRN}", models.Repository),
    ("/api/releases", models.Releases),
    ("/api/releases/LCG_900", models.Release),
    (f"/api/releases/LCG_900/{PLAT}", models.PackageTable),
    (f"/api/releases/LCG_901/{PLAT}", models.PackageTable),
    ("/api/nightlies/dev4", models.Nightly),
    (f"/api/nightlies/dev4/latest/{PLAT}", models.PackageTable),
    ("/api/packages/zeta", models.Package),
    ("/api/search?q=a", models.SearchResult),
    ("/api/search?q=", models.SearchResult),
    (f"/api/diff?a=LCG_900/{PLAT}&b=LCG_901/{PLAT}", models.Diff),
    (f"/api/diff?a=dev4/latest/{PLAT}&b=LCG_900/{PLAT}", models.Diff),
]


def _round_trip(model, body: bytes):
    adapter = TypeAdapter(model)
    value = adapter.validate_json(body, strict=False)
    return adapter.dump_python(value, mode="json", by_alias=True)


@pytest.mark.parametrize(("path", "model"), _PORTAL_PATHS, ids=[p for p, _ in _PORTAL_PATHS])
def test_answers_are_exactly_their_documented_model(portal, path, model):
    r = httpx.get(portal.url + path)
    assert r.status_code == 200, (path, r.text[:300])
    assert r.headers["content-type"] == "application/json"
    assert _round_trip(model, r.content) == r.json(), path


def test_a_model_mismatch_would_be_seen():
    """The check above can fail: an answer missing a required field or carrying one more
    field than its model does not survive the round trip unchanged."""
    good = {"q": "x", "hits": [{"name": "a", "version": "1", "stacks": ["LCG_1"]}]}
    assert _round_trip(models.SearchResult, httpx.Response(200, json=good).content) == good
    extra = {**good, "surprise": 1}
    assert _round_trip(models.SearchResult, httpx.Response(200, json=extra).content) != extra
    with pytest.raises(ValueError, match="hits"):
        _round_trip(models.SearchResult, httpx.Response(200, json={"q": "x"}).content)
