"""The API fuzzed from its own ``/openapi.json`` with schemathesis.

Every documented operation gets a bounded number of generated requests, valid and
invalid, each sent once with a support token and once with a subject token, to the
real API over HTTP (with a worker, real Redis, local object storage). Checks:

- no answer is a 5xx;
- every error is ``application/problem+json`` carrying the RFC 9457 fields;
- every answer matches the schema documented for its status.

Deterministic: Hypothesis runs derandomized (a fixed seed) with no example database,
and without shrinking, so a run stays bounded and a failure is reported as found.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.result import Err, Ok
from schemathesis.errors import InvalidSchema
from schemathesis.specs.openapi.checks import response_schema_conformance

from connectors.testing import MemoryConnector
from service.api.operations import OPERATIONS
from tests.service.conftest import Api, ApiFactory

MAX_EXAMPLES = 12
"""Generated requests per operation and mode; each is sent once per token."""
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
PROBLEM_FIELDS = {"type": str, "title": str, "status": int, "detail": str, "instance": str}


def errors_are_problems(
    ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool:
    """Every 4xx and 5xx answer is an RFC 9457 problem whose status is the answer's."""
    if response.status_code < 400:
        return True
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/problem+json"), (
        f"{response.status_code} answered as {content_type!r}, not application/problem+json"
    )
    problem = response.json()
    assert isinstance(problem, dict), f"the problem is not a JSON object: {problem!r}"
    for name, kind in PROBLEM_FIELDS.items():
        assert isinstance(problem.get(name), kind), f"the problem's {name} is missing or wrong"
    assert problem["status"] == response.status_code, "the problem's status is not the answer's"
    return True


CHECKS: list[Any] = [not_a_server_error, errors_are_problems, response_schema_conformance]


def fuzz(base_url: str, tokens: dict[str, str], job_ids: list[str]) -> list[str]:
    """Fuzz every operation of the served schema; what failed, one entry per operation and mode.

    Operations on a job run with generated ids (mostly no such job) and, with valid
    data, on each of ``job_ids`` too, so real jobs' answers meet their schemas.
    """
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    with requests.Session() as session:
        operations = [_loaded(result) for result in schema.get_all_operations()]
        documented = {operation.label for operation in operations}
        assert documented == {f"{op.method} {op.path}" for op in OPERATIONS}, documented
        for operation in operations:
            runs = [(mode, operation.as_strategy(mode)) for mode in _modes(operation)]
            if "{job_id}" in operation.path:
                runs += [
                    (
                        GenerationMode.POSITIVE,
                        operation.as_strategy(path_parameters={"job_id": job}),
                    )
                    for job in job_ids
                ]
            for mode, strategy in runs:
                failure = _fuzz(strategy, base_url, tokens, session)
                if failure:
                    failures.append(f"{operation.label} ({mode.value}): {failure}")
    return failures


def _loaded(result: Ok[Operation] | Err[InvalidSchema]) -> Operation:
    """An operation of the schema; a schema schemathesis cannot read fails the test."""
    assert isinstance(result, Ok), f"the OpenAPI document is not usable: {result.err()}"
    return result.ok()


def _modes(operation: Operation) -> list[GenerationMode]:
    """Valid requests always; invalid ones where there is an input to make invalid."""
    if any(True for _ in operation.iter_parameters()) or operation.body:
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def _fuzz(
    strategy: SearchStrategy[schemathesis.Case[Any]],
    base_url: str,
    tokens: dict[str, str],
    session: requests.Session,
) -> str | None:
    """Send each generated request with every token; the first failure found, if any."""

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def run(case: schemathesis.Case[Any]) -> None:
        for token in tokens.values():
            headers = {"Authorization": f"Bearer {token}"}
            response = case.call(base_url=base_url, headers=headers, session=session, timeout=10)
            case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:
        return str(exc)
    return None


@pytest.mark.slow
async def test_every_operation_survives_fuzzing(api_factory: ApiFactory) -> None:
    crm = MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1, "name": "Alice"}]}})
    api: Api = await api_factory({"crm": crm}, s3_bucket=None, rate_limit=0, subject_rate_limit=0)
    export = await api.export()
    await api.wait(export["id"], "succeeded")
    status, _, erasure = await api.request(
        "POST", "/v1/erasures", json={"connectors": ["crm"], "dry_run": True}
    )
    assert status == 202, erasure
    await api.wait(erasure["id"], "succeeded")
    tokens = {
        "support": api.token("support-1", "support", ttl=3600),
        "subject": api.token("alice", "subject", ttl=3600),
    }
    failures = await asyncio.to_thread(fuzz, api.base, tokens, [export["id"], erasure["id"]])
    assert not failures, "\n\n".join(failures)
