"""Fuzzing: schemathesis against the app's own OpenAPI schema, with a valid key, on real PostgreSQL + Redis.

Every operation of the schema gets generated requests (schemathesis strategies driven by Hypothesis,
derandomized so a run is repeatable): valid data, invalid data (negative mode), and valid data aimed at ids that
exist (a dataset with items, a job, a model with ONNX artifacts), so the id-taking routes are reached past their
404 too. Then the stateful phase: schemathesis follows the schema's OpenAPI links (app/api/openapi.py) from the
responses to the operations that take their ids, in random sequences (seeded rounds, each repeatable; a round that
Hypothesis stops because the live database answered a replayed sequence differently is followed by the next).

Every response must pass every check schemathesis has (``--checks all``): not a server error, status code, content
type, body and headers conform to the schema, invalid data is refused with a 4xx, valid data is accepted, missing
required headers are refused, an undeclared method is a 405 whose ``Allow`` names the path's methods, and the
stateful checks (use after free, resource availability, ignored auth, object-level authorization).

One allowance, in ``positive_data_acceptance``: JSON Schema cannot say that a manifest's lines name the uploaded
files, that an image's bytes decode, that a zip holds a manifest, that a reviewer's tag is one of *this* dataset's
classes, that two classes do not look alike (the code ``ambiguous_names``) or that an Idempotency-Key was not used
for another body. A schema-valid request may therefore be refused with a 422 only when every problem it names is
such a content field (:data:`CONTENT_FIELDS`); a 422 naming any other field (one the schema describes in full: a
name, a class list in JSON, a cursor, a limit, model_id, ...) is a failure. At least 1,000 requests in total
(counted), every operation of the schema among them.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from collections import Counter

import hypothesis
import redis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as CHECKS_REGISTRY
from schemathesis.checks import load_all_checks
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance, unsupported_method

from app.config import Settings
from app.db import session_scope
from app.main import create_app
from app.models import Model
from app.services.api_keys import create_api_key
from tests.app.model_fixtures import BLUE, CLASSES, RED, channel_classifier_onnx, solid, store_model

load_all_checks()

#: Per operation, the fields whose validity depends on content JSON Schema cannot describe (see the docstring):
#: a 422 naming only these is the answer to a schema-valid request whose *content* is wrong.
CONTENT_FIELDS: dict[str, set[str]] = {
    "POST /datasets": {"manifest", "images", "archive", "file", "candidates", "label", "classes"},
    "POST /datasets/{dataset_id}/items": {"manifest", "images", "archive", "file", "candidates", "label", "classes"},
    "POST /predict": {"image", "candidates"},
    "PATCH /items/{item_id}": {"label"},
    # an answer's item must be in the dataset's current audit sample, its label one of the dataset's classes
    "POST /datasets/{dataset_id}/audits/current/answers": {"item_id", "label"},
    "POST /datasets/{dataset_id}/jobs": {"Idempotency-Key"},  # only as idempotency_key_reused (below)
    # a webhook URL's host must resolve, to public addresses only, when it is registered: DNS, not the schema
    "POST /webhooks": {"url"},
    # Label Studio's labeling config is XML (a <Choices> on an <Image> sharing a class with the dataset); a task's
    # image must be one of the dataset's items or readable from Label Studio; an annotation's choice a class
    "POST /label-studio/{dataset_id}/setup": {"schema"},
    "POST /label-studio/{dataset_id}/predict": {"label_config", "data."},
    "POST /label-studio/{dataset_id}/webhook": {"project.label_config", "task.data", "annotation"},
}


def _content_only(case, response) -> bool:
    """Whether a 422 names only content fields of the operation (a multipart body's; JSON bodies are described)."""
    if response.status_code != 422:
        return False
    label = case.operation.label
    problem = json.loads(response.content)
    if label == "POST /datasets/{dataset_id}/jobs":
        return problem.get("code") == "idempotency_key_reused"
    if problem.get("code") == "idempotency_key_reused":  # an upload's key, sent before with another upload
        return label in IDEMPOTENT
    if label == "POST /datasets" and problem.get("code") == "ambiguous_names":
        return True  # classes that look alike ("cat" and "Cat", docs/api.md "Names"): no JSON Schema can say it
    if label == "POST /datasets" and "multipart" not in (case.media_type or ""):
        return False
    fields = {e["field"] for e in problem.get("errors") or []}
    allowed = CONTENT_FIELDS.get(label, set())
    prefixes = tuple(f for f in allowed if f.endswith("."))  # "data.": any field of a task's data
    return bool(fields) and all(f in allowed or f.startswith(prefixes) for f in fields)


#: The operations that honour an Idempotency-Key (jobs, and the uploads: docs/api.md).
IDEMPOTENT = {"POST /datasets/{dataset_id}/jobs", "POST /datasets", "POST /datasets/{dataset_id}/items"}


def positive_data_acceptance_beyond_content(ctx, response, case):
    """schemathesis's ``positive_data_acceptance``, less the content refusals of :data:`CONTENT_FIELDS`."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if _content_only(case, response):
            return None
        raise


CHECKS = [
    *(c for c in CHECKS_REGISTRY.get_all() if c is not positive_data_acceptance),
    positive_data_acceptance_beyond_content,
]
EXAMPLES_PER_OPERATION = 40
STATEFUL_EXAMPLES = 200
STATEFUL_ROUNDS = 4  # at most: the next round starts only when one stopped early (below)
TAGS = CLASSES


def _seed(client, headers: dict[str, str]) -> dict[str, list[str]]:
    """Real rows for the fuzzer to aim at: a dataset with items, a job, a model, a webhook with deliveries; some spare
    datasets and webhooks to delete."""
    hooks = [client.post("/webhooks", headers=headers, json={"url": "https://93.184.215.14/fuzz"}) for _ in range(5)]
    assert all(r.status_code == 201 for r in hooks), [r.text for r in hooks]
    rows = [{"file": f"img{i}.png", "candidates": [TAGS[i % 3], TAGS[(i + 1) % 3]]} for i in range(3)]
    files = [("manifest", ("manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode(), "text/plain"))]
    colors = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]
    files += [("images", (f"img{i}.png", solid(c), "image/png")) for i, c in enumerate(colors)]
    res = client.post("/datasets", headers=headers, data={"name": "fuzz", "classes": json.dumps(TAGS)}, files=files)
    assert res.status_code == 201, res.text
    dataset_id = res.json()["id"]
    items = client.get(f"/datasets/{dataset_id}/items", headers=headers).json()["data"]
    res = client.post(f"/datasets/{dataset_id}/jobs", headers=headers, json={"method": "zero_shot"})
    assert res.status_code == 202, res.text
    job = res.json()
    model_id = store_model(dataset_id, channel_classifier_onnx())  # owned by the job's owner, with a job of its own
    with session_scope() as session:
        trained_id = session.get(Model, model_id).job_id
    spare = [client.post("/datasets", headers=headers, json={"name": f"spare{i}", "classes": TAGS}) for i in range(4)]
    return {
        "dataset_id": [dataset_id],
        "item_id": [i["id"] for i in items],
        "job_id": [job["id"], trained_id],
        "model_id": [model_id],
        "spare_dataset_id": [r.json()["id"] for r in spare],
        "webhook_id": [hooks[0].json()["id"]],
        "spare_webhook_id": [r.json()["id"] for r in hooks[1:]],
    }


def _strategies(operation, ids: dict[str, list[str]]):
    """Random valid data, random invalid data, and valid data whose ids exist (path, or /predict's query)."""
    out = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
    names = [p.name for p in operation.path_parameters]
    if names:
        # DELETE gets datasets and webhooks of its own: the ones the other operations aim at stay
        pool = {n: ids[f"spare_{n}"] if operation.method.upper() == "DELETE" else ids[n] for n in names}
        real = st.fixed_dictionaries({n: st.sampled_from(v) for n, v in pool.items()})
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            out.append(real.flatmap(lambda p, mode=mode: operation.as_strategy(mode, path_parameters=p)))
    if operation.path == "/predict" and operation.method.upper() == "GET":
        real = st.fixed_dictionaries({n: st.sampled_from(ids[n]) for n in ("model_id", "item_id")})
        out.append(real.flatmap(lambda q: operation.as_strategy(GenerationMode.POSITIVE, query=q)))
    if operation.path == "/items/{item_id}" and operation.method.upper() == "PATCH":
        # a reviewer's tag for an item that exists: a class of its dataset, or not
        item = st.sampled_from(ids["item_id"])
        label = st.one_of(st.sampled_from(TAGS), st.text(max_size=10))
        out.append(
            st.tuples(item, label).flatmap(
                lambda il: operation.as_strategy(path_parameters={"item_id": il[0]}, body={"label": il[1]})
            )
        )
    if operation.path == "/predict" and operation.method.upper() == "POST":
        # a real model and real images, with generated candidates / top_k (or none)
        body = st.fixed_dictionaries(
            {
                "model_id": st.sampled_from(ids["model_id"]),
                "image": st.lists(st.sampled_from([RED, BLUE]), min_size=1, max_size=3),
            },
            optional={
                "candidates": st.one_of(st.text(max_size=20), st.lists(st.sampled_from(TAGS + ["x"])).map(json.dumps)),
                "top_k": st.integers(1, 1000).map(str),
            },
        )
        out.append(body.flatmap(lambda b: operation.as_strategy(body=b, media_type="multipart/form-data")))
    return st.one_of(out)


def _coverage_cases(schema, operation, ids: dict[str, list[str]]) -> list:
    """Schemathesis's coverage phase: boundary and just-out-of-bounds values of every parameter and body field,
    missing required ones, wrong types, and other HTTP methods on the path (which must answer 405). Cases whose
    path ids are valid are sent twice: as generated (a 404) and with ids that exist, so the handler sees them."""

    def generate() -> list:
        config = schema.config.generation_for(operation=operation, phase="coverage")
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        return list(schema.iter_coverage_cases(operation, generation_modes=modes, generation_config=config))

    cases = generate()
    names = [p.name for p in operation.path_parameters]
    predict_query = operation.path == "/predict" and operation.method.upper() == "GET"
    if names or predict_query:
        for i, case in enumerate(generate()):
            if case.method.upper() != operation.method.upper() or case.meta is None:
                continue  # another method on the path: the 405 needs no real id
            if names and not case.meta.is_negative_at(ParameterLocation.PATH):
                pool = {n: ids[f"spare_{n}"] if case.method.upper() == "DELETE" else ids[n] for n in names}
                case.path_parameters = {**case.path_parameters, **{n: v[i % len(v)] for n, v in pool.items()}}
                if case.headers and "Idempotency-Key" in case.headers:  # else one key for many bodies: all 422
                    case.headers = {**case.headers, "Idempotency-Key": f"fuzz-{i}"}
                cases.append(case)
            elif predict_query and not case.meta.is_negative_at(ParameterLocation.QUERY):
                case.query = {**(case.query or {}), "model_id": ids["model_id"][0], "item_id": ids["item_id"][i % 3]}
                cases.append(case)
    return cases


def _drop_queue(broker_url: str, queue: str) -> None:
    """Remove the test queue's Redis keys (the job messages that the seeding and the fuzzer enqueued)."""
    r = redis.Redis.from_url(broker_url)
    try:
        keys = list(r.scan_iter(match=f"{queue}*", count=1000)) + [f"_kombu.binding.{queue}"]
        r.delete(*keys)
    finally:
        r.close()


def test_fuzz_openapi(prod_env: Settings) -> None:
    app = create_app()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # The key goes on every request: no generated Authorization headers (auth itself is tests/app/test_tenancy.py)
    schema.config.generation.update(with_security_parameters=False)
    with session_scope() as session:
        key = create_api_key(session=session, owner_name=f"fuzz-{uuid.uuid4().hex[:8]}")
    headers = {"Authorization": f"Bearer {key}"}

    calls: Counter[str] = Counter()
    statuses: Counter[tuple[str, int]] = Counter()
    failures: dict[str, str] = {}

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,  # the same cases every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # failures are collected below, not shrunk
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case) -> None:
        send(case)

    def send(case) -> None:
        label = case.operation.label
        try:
            response = case.call(headers=headers)
        except Exception as exc:  # the in-process transport re-raises what the app did not handle (a 500)
            calls[label] += 1
            failures.setdefault(f"{label} -> unhandled {type(exc).__name__}", f"{exc!r}\n{case.as_curl_command()}")
            return
        calls[label] += 1
        statuses[(label, response.status_code)] += 1
        checks = CHECKS if case.method.upper() == case.operation.method.upper() else [unsupported_method]
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except FailureGroup as exc:  # every distinct failure is reported, not only the first
            kinds = sorted(type(e).__name__ for e in exc.exceptions)
            failures.setdefault(f"{label} -> {response.status_code} {kinds}", str(exc)[:3000])

    class Stateful(schema.as_state_machine()):  # type: ignore[misc]
        """The stateful phase: sequences that follow the OpenAPI links, every response checked like the others."""

        def get_call_kwargs(self, case) -> dict:
            return {"headers": headers}

        def call(self, case, **kwargs):
            try:
                return super().call(case, **kwargs)
            except Exception as exc:  # the app did not handle it (a 500): recorded, as hypothesis's replay of the
                # sequence against a database that has changed since reports only "inconsistent data generation"
                label = f"stateful {case.operation.label} -> unhandled {type(exc).__name__}"
                failures.setdefault(label, f"{traceback.format_exc()[-3000:]}\n{case.as_curl_command()}")
                raise

        def validate_response(self, response, case, additional_checks=None, **kwargs) -> None:
            label = f"stateful {case.operation.label}"
            calls[label] += 1
            statuses[(label, response.status_code)] += 1
            try:
                case.validate_response(response, checks=CHECKS, headers=headers, transport_kwargs=kwargs)
            except FailureGroup as exc:
                kinds = sorted(type(e).__name__ for e in exc.exceptions)
                failures.setdefault(f"{label} -> {response.status_code} {kinds}", str(exc)[:3000])
            except Exception as exc:  # recorded, never raised: a raise makes hypothesis replay against a changed DB
                failures.setdefault(f"{label} -> {response.status_code} {type(exc).__name__}", repr(exc)[:3000])

    started = time.monotonic()
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            ids = _seed(client, headers)
        operations = [result.ok() for result in schema.get_all_operations()]
        for operation in operations:
            for case in _coverage_cases(schema, operation, ids):
                send(case)
            given(case=_strategies(operation, ids))(fuzz)()
        stateless = time.monotonic() - started
        # Rounds of seeded sequences (each seed repeatable). Hypothesis replays prefixes of earlier sequences, and
        # the live database may answer one differently by then (a spare dataset deleted since, a cursor compared
        # with this run's timestamps): it then stops that round ("inconsistent data generation"). Every response
        # was checked above, an error of the app itself is recorded by ``call``, and the asserts below require
        # that the rounds reached the id-taking operations through links.
        for round_seed in range(STATEFUL_ROUNDS):
            try:
                hypothesis.seed(round_seed)(Stateful).run(
                    settings=hypothesis.settings(
                        max_examples=STATEFUL_EXAMPLES,
                        stateful_step_count=8,
                        database=None,
                        deadline=None,
                        phases=[Phase.generate],
                        suppress_health_check=list(HealthCheck),
                    )
                )
                break  # a whole round ran
            except hypothesis.errors.FlakyStrategyDefinition as exc:
                print(f"fuzz: stateful round {round_seed} stopped early ({str(exc).splitlines()[0]})")
            except Exception:
                if not failures:  # not one of the app's errors recorded by ``call``: the test's own
                    raise
                break
    finally:
        _drop_queue(prod_env.broker_url, prod_env.queue)
    print(f"\nfuzz: stateless {stateless:.0f} s, stateful {time.monotonic() - started - stateless:.0f} s")

    total = sum(n for label, n in calls.items() if not label.startswith("stateful "))
    print(f"fuzz: {total} requests over {len(calls)} operations")
    for label, n in sorted(calls.items()):
        print(f"  {label}: {n} ({', '.join(f'{s} x{c}' for (op, s), c in sorted(statuses.items()) if op == label)})")
    assert not failures, "\n\n".join(f"== {k}\n{v}" for k, v in failures.items())
    assert {label for label in calls if not label.startswith("stateful ")} == {op.label for op in operations}
    assert total >= 1000, f"only {total} generated requests"
    # the id-taking operations were reached with ids that exist, not only with random ones
    for label in (
        "GET /items/{item_id}",
        "GET /jobs/{job_id}",
        "GET /models/{model_id}/export",
        "GET /predict",
        "GET /webhooks/{webhook_id}/deliveries",
    ):
        assert statuses[(label, 200)] > 0, label
    # the stateful phase followed links: operations that take an id got one from an earlier response
    for label in ("GET /datasets/{dataset_id}", "GET /jobs/{job_id}", "GET /webhooks/{webhook_id}"):
        assert statuses[(f"stateful {label}", 200)] > 0, label
    # an item id taken from a listing (which item operation the derandomized walk picks depends on the schema)
    item_ops = ("GET /items/{item_id}", "GET /items/{item_id}/image", "PATCH /items/{item_id}")
    assert sum(statuses[(f"stateful {label}", 200)] for label in item_ops) > 0, item_ops


def test_events_after_beyond_bigint_is_422_not_500(alice) -> None:
    """Found by the fuzzer: `after` past the 64-bit event ids was a 500 from PostgreSQL (bigint out of range)."""
    ds = alice.make_dataset(3)
    try:
        job = alice.post(f"/datasets/{ds['id']}/jobs", json={"method": "zero_shot"}).json()
    finally:
        _drop_queue(alice.settings.broker_url, alice.settings.queue)
    ok = alice.get(f"/jobs/{job['id']}/events", params={"after": 2**63 - 1})
    assert ok.status_code == 200 and ok.json()["data"] == []
    for after in (2**63, 10**30):
        r = alice.get(f"/jobs/{job['id']}/events", params={"after": after})
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
        assert r.json()["errors"][0]["field"] == "after"


def test_wrong_json_types_are_422_not_coerced(alice) -> None:
    """Found by the fuzzer: `"momentum": false` made a job with momentum 0.0; "3", 1 and "yes" were coerced too."""
    ds = alice.make_dataset(3)
    for body, field in [
        ({"momentum": False}, "momentum"),
        ({"momentum": "0.5"}, "momentum"),
        ({"epochs": "3"}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"csc": "yes"}, "csc"),
        ({"csc": 1}, "csc"),
    ]:
        r = alice.post(f"/datasets/{ds['id']}/jobs", json=body)
        assert r.status_code == 422, (body, r.text)
        assert [e["field"] for e in r.json()["errors"]] == [field], r.text
    assert alice.post("/datasets", json={"name": 5, "classes": ["a", "b"]}).status_code == 422
    item = alice.get(f"/datasets/{ds['id']}/items").json()["data"][0]
    assert alice.patch(f"/items/{item['id']}", json={"label": 1}).status_code == 422
