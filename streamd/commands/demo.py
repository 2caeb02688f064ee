"""``streamd demo`` (what ``make run`` does): the daemon learning from a live folder stream of MNIST tasks.

It writes the demo config (the defaults, with a small encoder so that it finishes in a few minutes
on a laptop CPU), starts ``streamd run`` as a separate process, feeds its inbox with
``streamd produce dir`` (mnist5k, five class tasks, with task folders), waits until the daemon has
consumed the stream and printed its summary, then shows what was learnt: the latest snapshot's probe
figures, ``streamd report`` plots of the probe history, and a linear probe on scikit-learn's digits
of the latest encoder against a random one of the same architecture. Everything lives under ``--workdir``.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

DEMO_CONFIG = """\
# The embedded demo: defaults everywhere except a small encoder and small images.
[source]
kind = "directory"
[source.directory]
path = "{work}/inbox"
settle_seconds = 0.5
[dead_letter]
path = "{work}/dead-letter"
[model]
arch = "resnet_tiny"
image_size = {image_size}
objective = "simsiam"
objective_kwargs = {{proj_hidden = 256, proj_dim = 128, pred_hidden = 64}}
[strategy]
name = "lump"
[learner]
batch_size = 32
max_wait_seconds = 2.0
[boundary]
mode = "both"
[checkpoint]
dir = "{work}/checkpoints"
every_steps = 20
[snapshots]
dir = "{work}/snapshots"
every_steps = 50
[probe]
per_task = 64
every_steps = 25
history_dir = "{work}/probe-history"
[api]
host = "127.0.0.1"
port = {port}
[logging]
progress_seconds = 3.0
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the daemon on a live MNIST task stream (make run)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("var/demo"), help="everything goes here (wiped first)")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--per-task", type=int, default=1000, help="images per task (mnist5k has 1,000 per class pair)")
    p.add_argument("--rate", type=float, default=400.0, help="images per second the producer sends (0 = at once)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--port", type=int, default=9400, help="HTTP API port (/metrics, /v1/snapshots); 0 = any free")
    p.set_defaults(func=main)


def main(args) -> int:
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "inbox").mkdir(parents=True)
    config = work / "demo.toml"
    config.write_text(DEMO_CONFIG.format(work=work.as_posix(), image_size=args.image_size, port=args.port))
    streamd = [sys.executable, "-m", "streamd"]
    print(f"streamd demo: config {config}; API on http://127.0.0.1:{args.port}/metrics while it runs", file=sys.stderr)
    daemon = subprocess.Popen(streamd + ["run", "--config", str(config), "--exit-when-idle", "8"],
                              stdout=subprocess.PIPE, text=True)
    producer = subprocess.Popen(streamd + ["produce", "dir", "--out", str(work / "inbox"), "--dataset", "mnist5k",
                                           "--split", "class", "--tasks", str(args.tasks),
                                           "--per-task", str(args.per_task), "--rate", str(args.rate),
                                           "--image-size", str(args.image_size)], stdout=subprocess.DEVNULL)
    try:
        if producer.wait() != 0:
            daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate()
    except KeyboardInterrupt:  # Ctrl-C reaches both children too; the daemon checkpoints and exits
        producer.wait()
        out, _ = daemon.communicate()
    if daemon.returncode != 0 or producer.returncode != 0:
        print(f"streamd demo: daemon exited {daemon.returncode}, producer {producer.returncode}", file=sys.stderr)
        return 1
    summary = json.loads(out)
    print(json.dumps(summary, indent=2))
    print(f"\n{summary['records_seen']} images, {summary['steps']} steps, {summary['tasks']} tasks "
          f"({len(summary['boundaries'])} boundaries), {summary['checkpoints']} checkpoints, "
          f"{summary['snapshots']} snapshots in {work / 'snapshots'} "
          f"(load one: streamd pull, or streamd.client.load_encoder)", file=sys.stderr)
    return show_what_was_learnt(work)


def show_what_was_learnt(work: Path) -> int:
    from streamd.bench._encoder_probe import digits_linear_probe
    from streamd.service.snapshots import read_manifest, resolve_version

    latest = resolve_version(work / "snapshots", "latest")
    if latest is None:
        print("streamd demo: no snapshot passed the publish gate; see the manifests' gate verdicts", file=sys.stderr)
        return 1
    probe = read_manifest(work / "snapshots" / latest)["probe"] or {}
    accuracy = probe.get("accuracy") or {}
    print(f"latest {latest}: probe kNN accuracy per task {json.dumps(accuracy)}, mean forgetting "
          f"{probe.get('forgetting_mean', float('nan')):.3f}, health {json.dumps(probe.get('health'))}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "streamd", "report", str(work / "probe-history"), "--out",
                    str(work / "report")], check=False)
    linear = digits_linear_probe(work / "snapshots")
    (work / "digits-linear-probe.json").write_text(json.dumps(linear, indent=2))
    print(f"digits linear probe (held-out 30%): latest encoder {linear['trained']:.1%}, random encoder of the same "
          f"architecture {linear['random_init']:.1%} (margin {100 * linear['margin_over_random']:+.1f} points), "
          f"raw pixels {linear['raw_pixels']:.1%}", file=sys.stderr)
    return 0
