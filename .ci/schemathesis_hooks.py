"""Schemathesis hooks for .ci/schemathesis.

openapi.json says in JSON Schema everything about a request that JSON Schema can say. Three
rules of the README it cannot, because they depend on the server's state or on arithmetic:

- `function` must name a function in FUNCTIONS_DIR (the run's directory holds one, `echo`);
- `before` in `GET /jobs` must name a job that is stored now;
- `run_at` must lie within the years 0000 to 9999 once converted to UTC (a year-9999 time
  with a negative offset is in year 10000).

A request generated as valid that breaks one of them is answered 400, which the
positive_data_acceptance check would report. So before a positive case is sent, these hooks
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


@schemathesis.hook
def before_call(context, case, **kwargs):
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
    # A bulk delete says how many jobs went, not which: forget them all.
    if method == "POST" and case.path == "/jobs/delete" and response.status_code == 200:
        if response.json().get("affected", 0) > 0:
            stored_ids.clear()
