"""``streamd report HISTORY --out DIR``: plots and a markdown summary of a probe history."""
from __future__ import annotations

from streamd.report import build_report


def run(args) -> int:
    print(f"wrote {build_report(args.history, args.out)}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="plot a probe history (accuracy matrix, forgetting, drift, loss)")
    p.add_argument("history", help="the probe history folder (part-*.parquet) or one Parquet file")
    p.add_argument("--out", required=True, help="folder for the PNGs and summary.md")
    p.set_defaults(func=run)
