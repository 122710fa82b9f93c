"""schemathesis against the portal's ``/openapi.json``, served by a real uvicorn server over the
real published repository of ``conftest.py``: every API operation is called with generated
requests (a bounded, derandomized number per operation) and every answer must be no 5xx and
conform to the response schema the app declares for its status code.

Generated strings almost never name something that exists, so the path and query parameters
are drawn half from the generator and half from the names actually published (releases,
platforms, slots, days, packages, the repository, diff operands): both the 200 answers and the
404/400/422 ones are checked against the schema."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import FailureGroup, not_a_server_error, response_schema_conformance
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode
from schemathesis.schemas import APIOperation

from web.conftest import FQRN, PLAT

MAX_EXAMPLES = 25
# the operations of the first portal (test_app.py lists them); the ones added since are fuzzed
# the same way, found in the served document
FIRST_OPERATIONS = {"/api/repositories", "/api/repositories/{fqrn}", "/api/releases",
                    "/api/releases/{release}", "/api/releases/{release}/{platform}",
                    "/api/nightlies/{slot}", "/api/nightlies/{slot}/{day}/{platform}",
                    "/api/packages/{name}", "/api/search", "/api/diff"}


def known_values(published, operation_path: str) -> dict[str, list[str]]:
    """Parameter name -> values that exist in the published repository (and near misses) for
    the operation at ``operation_path``."""
    packages = sorted({name for hashes in published.hashes.values() for name in hashes})
    head = published.pub.head().revision
    if operation_path.startswith("/api/repositories/{fqrn}/"):
        revisions = [str(head), "1", str(head - 1), "LCG_900", str(head + 7), "no-such-tag"]
        return {
            "fqrn": [FQRN, "x.example.org"],
            "revision": revisions,
            "a": revisions,
            "b": revisions,
            "path": ["lcg", "/lcg/releases", f"lcg/releases/LCG_900/eta/2.1/{PLAT}", "/",
                     "lcg/nightlies/dev4/Tue", "lcg/no-such-dir", "../etc"],
        }
    if operation_path.startswith("/api/logs/"):
        return {
            "fqrn": [FQRN, "x.example.org"],
            "path": [f"lcg/releases/LCG_900/zeta/1.0/{PLAT}/logs/build.log",
                     f"lcg/nightlies/dev4/Mon/zeta/1.0/{PLAT}/logs/build.log",
                     f"lcg/nightlies/dev4/Tue/toygen/0.3/{PLAT}/logs/test.log",
                     f"lcg/releases/LCG_900/zeta/1.0/{PLAT}/share",
                     "lcg/no-such-dir/logs/build.log", "../etc/logs/build.log", "/"],
        }
    operands = [f"LCG_900/{PLAT}", f"LCG_901/{PLAT}", f"dev4/Mon/{PLAT}", f"dev4/Tue/{PLAT}",
                f"dev4/latest/{PLAT}", "LCG_900", f"dev4/Someday/{PLAT}", f"LCG_7/{PLAT}"]
    return {
        "release": ["LCG_900", "LCG_901", "dev4", "LCG_1"],
        "platform": [PLAT, f"{PLAT}-dbg"],
        "slot": ["dev4", "dev3", "LCG_900"],
        "day": ["Mon", "Tue", "latest", "Someday"],
        "name": [*packages, "root"],
        "fqrn": [FQRN, "x.example.org"],
        "q": ["", "zet", "kap", "0.6", "eta", "2.1"],
        "a": operands,
        "b": operands,
    }


def _mixed(strategy: st.SearchStrategy, known: dict[str, list[str]]) -> st.SearchStrategy:
    """Each generated parameter dictionary as generated, or with its known parameters all set to
    values that exist, or each of them swapped or not."""

    def swap(generated: Any) -> st.SearchStrategy:
        if not isinstance(generated, dict) or not known.keys() & generated.keys():
            # negative generation wraps its values: those are left as they are
            return st.just(generated)
        existing = {key: st.sampled_from(known[key]) if key in known else st.just(value)
                    for key, value in generated.items()}
        either = {key: st.one_of(st.just(value), st.sampled_from(known[key])) if key in known
                  else st.just(value) for key, value in generated.items()}
        return st.one_of(st.fixed_dictionaries(existing), st.fixed_dictionaries(either),
                         st.just(generated))

    return strategy.flatmap(swap)


@pytest.fixture(scope="module")
def api_schema(portal, published):
    """The OpenAPI document the running portal serves, loaded by schemathesis, with the known
    names mixed into its generated path and query parameters."""
    schema = schemathesis.openapi.from_url(f"{portal.url}/openapi.json",
                                           config=SchemathesisConfig())
    schema.config.update(base_url=portal.url)

    @schema.hook
    def before_generate_path_parameters(context, strategy):
        return _mixed(strategy, known_values(published, context.operation.path))

    @schema.hook
    def before_generate_query(context, strategy):
        return _mixed(strategy, known_values(published, context.operation.path))

    return schema


def api_operations(schema) -> list[APIOperation]:
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= FIRST_OPERATIONS
    assert {op.method.upper() for op in operations} == {"GET"}
    return operations


def fuzz(operation: APIOperation, mode: GenerationMode) -> list[int]:
    """Call ``operation`` with MAX_EXAMPLES derandomized generated requests, checking each
    answer; the status codes seen."""
    statuses: list[int] = []

    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case) -> None:
        response = case.call_and_validate(checks=[not_a_server_error,
                                                  response_schema_conformance])
        statuses.append(response.status_code)

    call()
    return statuses


# schemathesis.pytest.from_fixture + schema.parametrize() fail under pytest 9 (schemathesis
# 4.32 reads the removed ``Function._nodeid``); the operations are found in the served document
# and each is a subtest driving the operation's own Hypothesis strategy.
def test_api_answers_conform_to_its_openapi_document(api_schema, subtests):
    for operation in api_operations(api_schema):
        with subtests.test(msg=operation.label):
            statuses = fuzz(operation, GenerationMode.POSITIVE)
            # a real answer was checked, not only errors
            assert 200 in statuses, (operation.label, statuses)


def test_invalid_queries_are_refused_as_documented(api_schema, subtests):
    """Negative generation (queries the schema forbids: missing, too long, out of range, wrong
    type) answers a documented 4xx (FastAPI's 422 with its validation body), never a 5xx."""
    queried = [op for op in api_operations(api_schema)
               if any(p.location == "query" for p in op.iter_parameters())]
    assert {"/api/search", "/api/diff"} <= {op.path for op in queried}
    for operation in queried:
        with subtests.test(msg=operation.label):
            statuses = fuzz(operation, GenerationMode.NEGATIVE)
            assert 422 in statuses, (operation.label, statuses)


def test_the_checks_catch_an_answer_that_does_not_conform(api_schema, portal):
    """The conformance check is live: the real answer of /api/repositories (a list) offered as
    the answer of /api/releases (an object) is refused."""
    case = api_schema["/api/releases"]["GET"].Case()
    wrong = httpx.get(f"{portal.url}/api/repositories")
    assert wrong.status_code == 200 and isinstance(wrong.json(), list)
    with pytest.raises(FailureGroup) as refused:
        case.validate_response(wrong, checks=[response_schema_conformance])
    assert [str(e).splitlines()[0] for e in refused.value.exceptions] == \
        ["Response violates schema"]
    case.validate_response(httpx.get(f"{portal.url}/api/releases"),
                           checks=[not_a_server_error, response_schema_conformance])
