"""Schemathesis hooks for .ci/schemathesis.

openapi.json says in JSON Schema everything about a request that JSON Schema can say. Three
rules of the README it cannot, because they depend on the server's state or on arithmetic:

- `function` must name a function in FUNCTIONS_DIR (the run's directory holds one, `echo`);
- `before` in `GET /jobs` must name a job that is stored now;
- `run_at` must lie within the years 0000 to 9999 once converted to UTC (a year-9999 time
  with a negative offset is in year 10000).

A request generated as valid that breaks one of them is answered 400, which the
positive_data_acceptance check would report. And a `wait` in `GET /jobs/{id}` that the server
takes (up to 60 s) is cut to 1 s, in every case, within the run's request timeout: a pending
job is answered only when the wait ends. So before a positive case is sent, these hooks
make it follow those rules as well, changing only the value concerned. Negative cases are sent
as generated.
"""

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
    if not is_positive(case):
        return
    if case.method.upper() == "POST" and case.path == "/jobs" and isinstance(case.body, dict):
        if isinstance(case.body.get("function"), str):
            case.body["function"] = FUNCTION
        run_at = case.body.get("run_at")
        if isinstance(run_at, str) and not utc_year_in_range(run_at):
            # The same local time read as UTC, which is within range.
            case.body["run_at"] = re.sub(r"([+-]\d\d:\d\d|[zZ])$", "Z", run_at)
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
    if method == "POST" and case.path == "/jobs" and response.status_code == 201:
        stored_ids.add(response.json()["job_id"])
    if method == "DELETE" and case.path == "/jobs/{id}" and response.status_code == 204:
        stored_ids.discard(str(case.path_parameters.get("id")).lower())
