"""Property: whatever JSON arrives, the normalizer raises only our errors and never invents an end.

A terminal status may only come from the status field holding one of the table's terminal raw
values, of the exact JSON type; everything else is in progress or one of our ProviderErrors.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jobtracker.models.jobs import JobStatus
from worker.catalogue.table import PROVIDERS, ProviderSpec
from worker.errors import ProviderError
from worker.providers.normalize import Answer, lookup, normalize

NOW = datetime(2025, 1, 1, tzinfo=UTC)
SPECS = list(PROVIDERS.values())

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def raw_statuses(spec: ProviderSpec) -> st.SearchStrategy[Any]:
    """Known raw values, their near misses (other types, other cases) and junk."""
    known = list(spec.status_values)
    near: list[Any] = [str(k) for k in known] + [k.lower() for k in known if isinstance(k, str)]
    near += [float(k) for k in known if isinstance(k, int)] + [True, False, 0, 2, 4, 6, 8]
    return st.sampled_from(known) | st.sampled_from(near) | json_values


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[ProviderSpec, Any]:
    spec = draw(st.sampled_from(SPECS))
    body: dict[str, Any] = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=3))
    if draw(st.booleans()):
        body[spec.status_field] = draw(raw_statuses(spec))
    for path in [spec.error_code_field, spec.error_message_field, *spec.result.fields.values()]:
        if draw(st.booleans()):
            value = draw(json_values | st.just("https://x/y.mp4"))
            node = body
            *parents, leaf = path.split(".")
            for part in parents:
                child = node.get(part)
                node[part] = child = child if isinstance(child, dict) else {}
                node = child
            node[leaf] = value
    if draw(st.integers(0, 5)) == 0:
        body["Error"] = draw(
            json_values
            | st.fixed_dictionaries(
                {"Code": st.sampled_from(["InternalError", "AuthFailure", "X.Y"]) | json_values}
            )
        )
    response: Any = {"Response": body}
    if draw(st.integers(0, 10)) == 0:
        response = draw(json_values)
    return spec, response


def check(spec: ProviderSpec, response: Any) -> None:
    try:
        answer = normalize(spec, response, now=NOW)
    except ProviderError:
        return
    assert isinstance(answer, Answer)
    assert answer.status not in (JobStatus.PENDING, JobStatus.EXPIRED)
    if answer.status.is_terminal:
        # The only documented terminal signal in a successful answer: a terminal raw status.
        assert isinstance(response, dict) and "Error" not in response["Response"]
        raw = lookup(response["Response"], spec.status_field)
        assert not isinstance(raw, bool)
        matching = [k for k in spec.status_values if type(k) is type(raw) and k == raw]
        assert matching and spec.status_values[matching[0]] == answer.status
    if answer.status == JobStatus.SUCCEEDED:
        assert answer.result is not None
        for key in spec.result.required:
            assert isinstance(answer.result[key], str) and answer.result[key].strip()
    else:
        assert answer.result is None


@settings(max_examples=400, deadline=None)
@given(spec=st.sampled_from(SPECS), response=json_values)
def test_arbitrary_json(spec: ProviderSpec, response: Any) -> None:
    check(spec, response)


@settings(max_examples=400, deadline=None)
@given(spec=st.sampled_from(SPECS), body=json_values)
def test_arbitrary_response_object(spec: ProviderSpec, body: Any) -> None:
    check(spec, {"Response": body})


@settings(max_examples=600, deadline=None)
@given(case=near_valid())
def test_near_valid_answers(case: tuple[ProviderSpec, Any]) -> None:
    check(*case)
