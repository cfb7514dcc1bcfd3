"""Schemathesis against the guard's own OpenAPI document: no 5xx, answers match the schema."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.guard.conftest import KEYS, base_config

EXAMPLES = 10


def test_guard_conforms_to_its_openapi_document(make_guard, tmp_path):
    cfg = base_config(tmp_path)
    # a body limit that no schema-valid request reaches (JSON Schema cannot express byte sizes)
    cfg["model"]["max_batch"] = 4
    cfg["server"]["max_body_bytes"] = 400_000
    # the per-address limit on requests without a key is tested in test_app; here every
    # invalid-credential probe must get its 401
    cfg["server"]["anonymous_rate"] = {"burst": 100_000, "per_second": 100_000}
    url, _ = make_guard(cfg)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {op.label for op in ops} >= {"POST /v1/models/{name}/predict", "POST /v2/models/{name}/infer"}
    statuses: set[int] = set()
    for op in ops:
        # positive and negative (schema-violating) cases for the served model; unknown model
        # names and routes are covered by test_app
        for mode, path_parameters in (
            (GenerationMode.POSITIVE, {"name": "digits"}),
            (GenerationMode.NEGATIVE, {"name": "digits"}),
        ):
            if mode == GenerationMode.NEGATIVE and not op.label.startswith("POST"):
                continue
            strategy = op.as_strategy(generation_mode=mode, path_parameters=path_parameters)

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def check(case):
                response = case.call(base_url=url, headers={"X-API-Key": KEYS["internal"]})
                statuses.add(response.status_code)
                assert response.status_code < 500, (case.as_curl_command(), response.text)
                case.validate_response(response, headers={"X-API-Key": KEYS["internal"]})

            check()
    assert 200 in statuses and 400 in statuses
