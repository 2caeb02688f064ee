"""``streamd bench chaos``: the daemon against the faults we can throw at it, with figures.

Each scenario runs the real daemon as a process against a real tansu broker or a real directory,
injects one kind of fault from outside (kill -9 at startup, while running and mid-checkpoint, a
frozen broker, a broker replaced by an empty one, full filesystems, fuzzed files, poison records) and scores the run from the audit log: records sent, trained,
dead-lettered by reason, lost (must be 0), seen twice (must all lie after the last durable
checkpoint), crashes, seconds to recover, peak RSS. Results go to JSON and, with ``--markdown``,
to a table (docs/reliability.md is made so). ``--quick`` is the subset ``make test`` runs.
Needs root for the tmpfs mounts of the disk-full scenario.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from streamd.bench import _chaos_inputs as inputs
from streamd.bench import _chaos_scenarios as scenarios
from streamd.bench._broker import Broker

SCENARIOS = ("kill9_directory", "kill9_kafka", "broker_freeze", "broker_restart", "disk_full", "fuzz", "poison")


def register(subparsers) -> None:
    p = subparsers.add_parser("chaos", help="faults against the real daemon: lost, repeated, crashes, recovery, RSS",
                              description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, from {', '.join(SCENARIOS)}")
    p.add_argument("--quick", action="store_true", help="small counts and short faults (the make-test subset)")
    p.add_argument("--kills", type=int, default=None, help="kill -9 moments per kill scenario (default 21; quick 3)")
    p.add_argument("--freeze-seconds", type=float, default=None, help="broker freeze (default 60; quick 8)")
    p.add_argument("--fuzz-cases", type=int, default=None, help="fuzzed inputs (default 1000; quick 120)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="keep the work folders here (default: a temp folder)")
    p.add_argument("--out", type=Path, default=Path("chaos-results.json"))
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here (e.g. docs/reliability.md)")
    p.set_defaults(func=main)


def run_chaos(names: list[str], work: Path, quick: bool, kills: int | None = None,
              freeze_seconds: float | None = None, seed: int = 0, fuzz_cases: int | None = None) -> dict:
    kills = kills if kills is not None else (3 if quick else 21)
    freeze_seconds = freeze_seconds if freeze_seconds is not None else (8.0 if quick else 60.0)
    fuzz_cases = fuzz_cases if fuzz_cases is not None else (120 if quick else 1000)
    per_task = 24 if quick else 96
    rows = []
    with Broker(work / "broker.log") as broker:
        runners = {
            "kill9_directory": lambda f: scenarios.kill9(f, "directory", kills, per_task, seed),
            "kill9_kafka": lambda f: scenarios.kill9(f, "kafka", kills, per_task, seed, broker.bootstrap),
            "broker_freeze": lambda f: scenarios.broker_freeze(f, broker, freeze_seconds, per_task),
            "broker_restart": lambda f: scenarios.broker_restart(f, per_task),
            "disk_full": lambda f: scenarios.disk_full(f, per_task, 3.0 if quick else 15.0),
            "fuzz": lambda f: inputs.fuzz(f, fuzz_cases, per_task, seed),
            "poison": lambda f: inputs.poison(f, broker.bootstrap, per_task, seed),
        }
        for name in names:
            started = time.monotonic()
            row = runners[name](work / name).as_dict()
            row["seconds"] = round(time.monotonic() - started, 1)
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return {"quick": quick, "seed": seed, "machine": platform.platform(), "python": platform.python_version(),
            "rows": rows, "all_ok": all(r["ok"] for r in rows)}


LEGEND = """# Reliability: the daemon under faults

Each row is one scenario of `streamd bench chaos`: the real daemon as a process, against a real
tansu broker or a real watched folder, with one kind of fault thrown at it from outside. Every
number comes from what the daemon left behind (its audit log, summary and checkpoints) and what
the harness did, never from the daemon's own claims. *sent*: records the harness produced;
*trained*, *held out*, *dead-lettered*: acks by status, summed over all runs (a record seen twice
counts twice); *lost*: sent but never acked (must be 0); *seen twice*: acked again by a later run,
allowed only after the earlier run's last durable checkpoint; *repeated after checkpoint*: acked
again although a durable checkpoint covered it, or twice in one run (must be 0); *crashes*: exits
the harness did not cause; *recover s*: from a restart (or the end of the fault) to the first
record acked again (disk full: to the first durable checkpoint); *peak RSS*: the highest VmHWM of
any daemon run. The quick subset (`--quick`) runs in `make test` (tests/test_chaos.py).

"""


def render_markdown(results: dict, command: str) -> str:
    head = ("| scenario | faults | sent | trained | held out | dead-lettered (by reason) | lost | seen twice | "
            "repeated after checkpoint | crashes | recover s (median / max) | peak RSS MB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in results["rows"]:
        dead = ", ".join(f"{k} {v}" for k, v in r["dead_lettered"].items()) or "0"
        recover = "-" if r["recover_seconds_median"] is None else f"{r['recover_seconds_median']} / {r['recover_seconds_max']}"
        lines.append(f"| {r['scenario']} | {r['faults']} | {r['records_sent']} | {r['trained']} | {r['held_out']} | "
                     f"{dead} | {r['lost']} | {r['seen_twice']} | {r['repeated_after_checkpoint']} | {r['crashes']} | "
                     f"{recover} | {r['peak_rss_mb']} |")
    notes = [f"- **{r['scenario']}**: " + "; ".join([f"{k}: {v}" for k, v in r["notes"].items()]
                                                    + [f"LIMIT BROKEN: {v}" for v in r["violations"]])
             for r in results["rows"] if r["notes"] or r["violations"]]
    return (LEGEND + f"Generated by `{command}` on {results['machine']}, Python {results['python']}"
            f"{' (quick)' if results['quick'] else ''}.\n\n" + head + "\n".join(lines) + "\n"
            + ("\n" + "\n".join(notes) + "\n" if notes else ""))


def main(args: argparse.Namespace) -> int:
    names = [n for n in args.scenarios.split(",") if n]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        print(f"streamd: unknown chaos scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="streamd-chaos-"))
    results = run_chaos(names, work, args.quick, args.kills, args.freeze_seconds, args.seed, args.fuzz_cases)
    args.out.write_text(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(render_markdown(results, "streamd " + " ".join(sys.argv[1:])))
    print(json.dumps({"all_ok": results["all_ok"], "out": str(args.out)}))
    return 0 if results["all_ok"] else 1
