"""1,000 fuzzed records through the daemon's ingest path (expand, parse_task, parse_label, decode):
nothing raises but DecodeError, every outcome class matches the case's expectation, every reason is
a listed snake_case word, and the memory peak stays within 1.5x of the steady state."""
from __future__ import annotations

import json
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import streamd.connectors.wire
import streamd.service.ingest
from streamd.connectors.base import Position, Record
from streamd.bench.fuzz_inputs import DEAD, KINDS, fuzz_records, summarize
from streamd.service.ingest import DEAD_LETTER_REASONS, DecodeError

N_CASES = 1000
RSS_RATIO_MAX = 1.5
N_STEADY = 200


@pytest.fixture(scope="module")
def corpus():
    return list(fuzz_records(N_CASES, seed=0))


@pytest.fixture(scope="module")
def summary(corpus):
    return summarize(corpus)      # raises (and fails every test using it) on anything but DecodeError


def test_corpus_is_large_reproducible_and_has_every_kind(corpus):
    assert len(corpus) == N_CASES and len({c.name for c in corpus}) == N_CASES
    per_kind = {kind: sum(c.kind == kind for c in corpus) for kind in KINDS}
    assert min(per_kind.values()) >= 9, per_kind
    assert sum(c.expect is not None for c in corpus) == N_CASES       # every case here knows its outcome
    again = list(fuzz_records(60, seed=0))
    assert [(c.payload, c.headers, c.content_type) for c in again] == \
        [(c.payload, c.headers, c.content_type) for c in corpus[:60]]
    other = list(fuzz_records(60, seed=1))
    assert sum(a.payload != b.payload for a, b in zip(again, other)) > 30


def test_every_case_gets_its_expected_outcome_and_a_listed_reason(summary):
    assert summary["mismatches"] == []
    reasons = {o.split(":", 1)[1] for o in summary["outcomes"] if o.startswith(DEAD)}
    assert reasons <= set(DEAD_LETTER_REASONS)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", r) and len(r) <= 32 for r in reasons)
    decoded = summary["outcomes"]["decodes"]
    dead = sum(n for o, n in summary["outcomes"].items() if o.startswith(DEAD))
    assert decoded > 500 and dead > 500                     # both sides are exercised in bulk
    # Every reason except the Kafka client's own is produced by some case.
    assert reasons == set(DEAD_LETTER_REASONS) - {"unparseable_record"}


def _reasons_in_source() -> set[str]:
    reasons = set()
    for module in (streamd.service.ingest, streamd.connectors.wire):
        text = Path(module.__file__).read_text()
        calls = re.findall(r'raise DecodeError\((\w+\([^)]*\)|"[^"]*"|[^,)]*)', text)
        literal = [c for c in calls if c.startswith('"')]
        dynamic = set(calls) - set(literal)
        assert dynamic <= {"_failure_reason(exc)"}, f"unlisted dynamic reason in {module.__name__}: {dynamic}"
        reasons |= {c.strip('"') for c in literal}
        if "_failure_reason(exc)" in calls:
            body = re.search(r"def _failure_reason.*?\n\n", text, re.S).group(0)
            reasons |= set(re.search(r'return "([a-z_]+)" if .* else "([a-z_]+)"', body).groups())
    return reasons


def test_dead_letter_reasons_list_every_reason_the_source_can_raise(summary):
    in_source = _reasons_in_source()
    assert {"empty", "corrupt", "truncated", "too_large", "bad_header", "bad_shape"} <= in_source
    assert in_source <= set(DEAD_LETTER_REASONS), in_source - set(DEAD_LETTER_REASONS)
    assert "unparseable_record" in DEAD_LETTER_REASONS and "dead_letter_failed" not in DEAD_LETTER_REASONS
    assert len(set(DEAD_LETTER_REASONS)) == len(DEAD_LETTER_REASONS)
    assert streamd.service.ingest.DecodeError is streamd.connectors.wire.DecodeError and issubclass(DecodeError, ValueError)


def test_peak_memory_over_the_corpus_stays_within_1_5x_of_steady_state(tmp_path, corpus):
    path = tmp_path / "records.pickle"
    with open(path, "wb") as f:
        for i in range(N_STEADY):      # ordinary images, as a running stream sees them
            payload, content_type, headers, _ = KINDS["good_png"][1](random.Random(f"steady:{i}"))
            pickle.dump(Record(payload, content_type, Position("steady", i), headers), f)
        for case in corpus:
            pickle.dump(case.record(), f)
    probe = Path(__file__).with_name("fuzz_rss_probe.py")
    done = subprocess.run([sys.executable, str(probe), str(path), str(N_STEADY)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    rss = json.loads(done.stdout)
    print("RSS", rss)
    assert rss["corpus_records"] == N_CASES
    assert rss["ratio"] <= RSS_RATIO_MAX, rss
