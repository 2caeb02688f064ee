"""``streamd report HISTORY --out DIR``: plots and a markdown summary of a probe history."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from streamd.errors import LocalIOError, NotFoundError, UsageError, os_error_text
from streamd.extras import import_extra


def run(args) -> int:
    history = Path(args.history)
    if not history.exists():
        raise NotFoundError(f"no probe history at {history}")
    if history.is_dir() and not any(history.glob("part-*.parquet")):
        raise NotFoundError(f"{history} holds no probe history yet (no part-*.parquet files)")
    import_extra("matplotlib", "streamd report")
    from streamd.report import build_report

    try:
        summary = build_report(history, args.out)
    except pa.ArrowInvalid as e:
        raise UsageError(f"{history} is not a Parquet probe history: {e}") from e
    except OSError as e:
        raise LocalIOError(f"cannot build the report in {args.out}: {os_error_text(e)}") from e
    print(f"wrote {summary}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="plot a probe history (accuracy matrix, forgetting, drift, loss)")
    p.add_argument("history", help="the probe history folder (part-*.parquet) or one Parquet file")
    p.add_argument("--out", required=True, help="folder for the PNGs and summary.md")
    p.set_defaults(func=run)
