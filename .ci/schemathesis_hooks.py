"""Schemathesis hooks for .ci/schemathesis.

openapi.json says in JSON Schema everything about a request that JSON Schema can say. Three
rules of the README it cannot, because they depend on the server's state or on arithmetic:

- `function` must name a function in FUNCTIONS_DIR (the run's directory holds one, `echo`);
- `before` in `GET /jobs` must name a job that is stored now;
- `run_at` must lie within the years 0000 to 9999 once converted to UTC (a year-9999 time
  with a negative offset is in year 10000).

A request generated as valid that breaks one of them is answered 400, which the
positive_data_acceptance check would report. So before a positive case is sent, these hooks
make it follow those rules as well, changing only the value concerned (for `POST /jobs/batch`,
in each item). Negative cases are sent as generated.

Two more about `Idempotency-Key`: a key used with another body is a 422, so a positive case
gets a key of its own; and tiny_http refuses a request head whose field values hold bytes
outside printable ASCII, or whose field names hold characters other than letters, digits and
`-`, with an empty 400 before the server sees it (a limit of the HTTP parser, not of the API).
So such a negative key is sent as a key the server itself refuses (it has a space inside),
and other generated fields that tiny_http would refuse (the fuzzer adds some to operations
with header parameters) are left out.

A positive case's `traceparent` is made one that matches the documented pattern: the
coverage phase sends values such as `0` as valid cases of a header parameter, whatever its
pattern says (seen with schemathesis 4).

And a `wait` in `GET /jobs/{id}` that the server takes (up to 60 s) is cut to 1 s, in every
case, within the run's request timeout: a pending job is answered only when the wait ends.
"""
import uuid

import datetime
import random
import re

import schemathesis

FUNCTION = "echo"

# Ids of the jobs stored now, as far as this run's answers tell.
stored_ids: set[str] = set()

def is_positive(case) -> bool:
    return case.meta is not None and case.meta.generation.mode.is_positive


def utc_year_in_range(text: str) -> bool:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return True  # Not for this hook to judge.
    try:
        moment.astimezone(datetime.timezone.utc)
    except OverflowError:
        # Python's years start at 1, the API's at 0000: only the upper end is out of range.
        return moment.year != 9999
    return True


def follow_submit_rules(body) -> None:
    if not isinstance(body, dict):
        return
    if isinstance(body.get("function"), str):
        body["function"] = FUNCTION
    run_at = body.get("run_at")
    if isinstance(run_at, str) and not utc_year_in_range(run_at):
        # The same local time read as UTC, which is within range.
        body["run_at"] = re.sub(r"([+-]\d\d:\d\d|[zZ])$", "Z", run_at)


KEY = "Idempotency-Key"
TRACEPARENT = "traceparent"
TRACEPARENT_PATTERN = re.compile(r"00-[1-9a-f][0-9a-f]{31}-[1-9a-f][0-9a-f]{15}-[0-9a-f]{2}")


def printable(value: str) -> bool:
    return all(" " <= char <= "~" for char in value)


def waits_long(value) -> bool:
    """Whether the server would take `wait=value` as a wait of more than a second."""
    text = str(value)
    return text.isascii() and text.isdigit() and 1 < int(text) <= 60


@schemathesis.hook
def before_call(context, case, **kwargs):
    # Any phase, positive or not: a wait the server accepts holds the answer until it ends.
    if case.method.upper() == "GET" and case.path == "/jobs/{id}" and isinstance(case.query, dict):
        if waits_long(case.query.get("wait")):
            case.query["wait"] = 1
    # The generated headers (a mapping, not always a dict), if any.
    headers = case.headers if case.headers is not None else {}
    for name in [name for name in headers if name.lower() != KEY.lower()]:
        if not re.fullmatch(r"[A-Za-z0-9-]+", name) or not printable(str(headers[name])):
            del headers[name]
    key = next((name for name in headers if name.lower() == KEY.lower()), None)
    if key is not None:
        value = str(headers[key])
        if not printable(value):
            headers[key] = "not a key"
        if is_positive(case):
            headers[key] = uuid.uuid4().hex
    if not is_positive(case):
        return
    trace = next((name for name in headers if name.lower() == TRACEPARENT), None)
    if trace is not None and not TRACEPARENT_PATTERN.fullmatch(str(headers[trace])):
        headers[trace] = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"
    if case.method.upper() == "POST" and case.path == "/jobs":
        follow_submit_rules(case.body)
    if case.method.upper() == "POST" and case.path == "/jobs/batch" and isinstance(case.body, dict):
        for item in case.body.get("jobs") or []:
            follow_submit_rules(item)
    if case.method.upper() == "GET" and case.path == "/jobs" and isinstance(case.query, dict):
        before = case.query.get("before")
        if before is not None and str(before).lower() not in stored_ids:
            if stored_ids:
                case.query["before"] = random.choice(sorted(stored_ids))
            else:
                del case.query["before"]


@schemathesis.hook
def after_call(context, case, response):
    method = case.method.upper()
    # A replay names the jobs of an earlier request, which may have been deleted since.
    replayed = any(name.lower() == "idempotent-replayed" for name in response.headers)
    if method == "POST" and case.path == "/jobs" and response.status_code == 201 and not replayed:
        stored_ids.add(response.json()["job_id"])
    if method == "POST" and case.path == "/jobs/batch" and response.status_code == 201 and not replayed:
        stored_ids.update(job["job_id"] for job in response.json()["jobs"])
    if method == "DELETE" and case.path == "/jobs/{id}" and response.status_code == 204:
        stored_ids.discard(str(case.path_parameters.get("id")).lower())
    # A bulk delete says how many jobs went, not which: forget them all.
    if method == "POST" and case.path == "/jobs/delete" and response.status_code == 200:
        if response.json().get("affected", 0) > 0:
            stored_ids.clear()
