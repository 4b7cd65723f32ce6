"""Hypothesis profiles for the fuzz tests, and how many examples each target runs.

Two profiles, chosen by the environment variable ``FITSTREAM_FUZZ_PROFILE``:

* ``ci`` (the default, what ``.ci/run`` runs): bounded and deterministic — ``derandomize=True``
  (the same examples on every run and every machine), no example database, no deadline.
  10,000 stream messages, 500 job specs, 500 alert-rule files, 48 CLI invocations (and 12
  more, of `fitstream submit`, in test_fuzz_job_specs.py).
* ``long``: by hand, ten times as many of each and fresh random examples on every run::

      FITSTREAM_FUZZ_PROFILE=long .venv/bin/python -m pytest tests/fuzz -q

A failure prints the falsifying example (Hypothesis' own report) or the generated message,
spec or rule file it was about; each bug found this way also has a plain regression test in
``test_fuzz_regressions.py``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_VARIABLE = "FITSTREAM_FUZZ_PROFILE"

#: Examples per fuzz target in each profile.
EXAMPLES = {
    "ci": {"stream_messages": 10_000, "job_specs": 500, "alert_rules": 500, "cli_arguments": 48},
    "long": {"stream_messages": 100_000, "job_specs": 5_000, "alert_rules": 5_000, "cli_arguments": 480},
}

# The tests share real services (a Redis stream, a database, consumer threads) set up once per
# test function, not per example; and they draw big payloads (1 MB strings) on purpose.
_SHARED = dict(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    print_blob=True,
)
settings.register_profile("ci", derandomize=True, **_SHARED)
settings.register_profile("long", derandomize=False, **_SHARED)

PROFILE = os.environ.get(PROFILE_VARIABLE, "ci")
if PROFILE not in EXAMPLES:
    raise ValueError(f"{PROFILE_VARIABLE}={PROFILE!r}: use one of {', '.join(EXAMPLES)}")


def examples(target: str) -> int:
    """How many examples ``target`` runs in the selected profile."""
    return EXAMPLES[PROFILE][target]


def fuzz_settings(max_examples: int) -> settings:
    """The selected profile with ``max_examples``: applied to each fuzz test, not loaded for the
    whole session (other tests keep Hypothesis' defaults)."""
    return settings(settings.get_profile(PROFILE), max_examples=max_examples)
