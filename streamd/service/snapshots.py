"""Immutable, versioned encoder snapshots: what downstream teams pull and fine-tune.

Layout under the snapshot root::

    v000042/model.safetensors   encoder weights only, torchvision keys (no pickle)
    v000042/config.json         architecture, kwargs and preprocessing (size, mean, std)
    v000042/manifest.json       version, time, sha256 of the other files, lineage, probe metrics
    latest                      one line naming the newest version; replaced atomically, moved last

A version is written into a temp folder, fsynced and renamed, so a reader sees a whole snapshot or
none; a failed publish (full disk, ...) leaves every earlier snapshot and ``latest`` as they were.
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import safetensors
import safetensors.torch
import torch
import torchvision

import streamd
from streamd import durable
from streamd.learning.preprocess import MEAN, STD
from streamd.service.alias_log import move_alias
from streamd.service.model_card import CARD, model_card

if TYPE_CHECKING:   # the pull client imports this module without the daemon's dependencies
    from streamd.service.metrics import Metrics
    from streamd.service.publish_gate import PublishGate

log = logging.getLogger(__name__)

MODEL, CONFIG, MANIFEST, LATEST = "model.safetensors", "config.json", "manifest.json", "latest"
VERSION_RE = re.compile(r"^v\d{6}$")
# An alias is a pointer file in the snapshot root naming a version: ``latest`` (moved by the daemon
# when a snapshot passes the publish gate) and any an operator sets (``stable``); streamd.service.aliases.
ALIAS_RE = re.compile(r"^(?!v\d{6}$)[a-z][a-z0-9_-]{0,31}$")
TMP_PREFIX = ".tmp-snapshot-"


# Reading (shared by the HTTP API and the pull client) ----------------------------------------------
def version_name(number: int) -> str:
    return f"v{number:06d}"


def list_versions(root: Path) -> list[str]:
    """Complete snapshot folders, oldest first (temp folders never match the pattern)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if VERSION_RE.match(p.name) and (p / MANIFEST).is_file())


def resolve_version(root: Path, version: str) -> str | None:
    """An alias (``latest``, ``stable``, ...) or ``vNNNNNN`` -> the name of an existing snapshot folder,
    or None. Anything else is rejected here, so no request string is ever joined into a path unchecked."""
    if ALIAS_RE.match(version):
        version = durable.read_pointer(root, version) or ""
    if not VERSION_RE.match(version) or not (root / version / MANIFEST).is_file():
        return None
    return version


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Writing -------------------------------------------------------------------------------------------
TIMM_RESNETS = ("resnet18", "resnet50")   # same parameter names in timm; its default stem and width


def encoder_config(encoder) -> dict:
    """config.json: enough to rebuild the plain torchvision module (``module``) and feed it correctly.

    A ResNet with torchvision's own stem is also described the way timm's Hugging Face Hub loader
    reads it (``architecture``, ``num_classes``, ``pretrained_cfg``): ``timm.create_model(arch,
    num_classes=0)`` then loads model.safetensors strictly."""
    spec = encoder.spec
    preprocessing = {"image_size": spec.image_size, "scale": "uint8 / 255", "mean": list(MEAN), "std": list(STD)}
    config = {
        "arch": spec.arch, "image_size": spec.image_size, "in_channels": spec.in_channels, "kwargs": dict(spec.kwargs),
        "feature_dim": encoder.feature_dim, "format": "torchvision", "module": encoder.architecture,
        "preprocessing": preprocessing,
    }
    stem = encoder.architecture.get("stem", {})
    if spec.arch in TIMM_RESNETS and (stem.get("in_channels"), stem.get("kernel_size"), stem.get("maxpool")) == (3, 7, True):
        config.update({"architecture": spec.arch, "num_classes": 0, "num_features": encoder.feature_dim,
                       "pretrained_cfg": {"input_size": [3, spec.image_size, spec.image_size], "mean": list(MEAN),
                                          "std": list(STD), "num_classes": 0, "classifier": "fc",
                                          "interpolation": "bilinear"}})
    return config


def library_versions() -> dict:
    return {"streamd": streamd.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


class SnapshotPublisher:
    def __init__(self, root: Path, keep_last: int = 5, keep_task_end: int = 20, metrics: Metrics | None = None,
                 training: dict | None = None, gate: PublishGate | None = None):
        self.root = Path(root)
        self.gate = gate   # None: every snapshot becomes latest
        self.training = training or {}   # objective, strategy, source: for the model card
        self.keep_last = max(1, keep_last)
        self.keep_task_end = keep_task_end  # 0: every task-end snapshot is kept
        self.metrics = metrics
        self.root.mkdir(parents=True, exist_ok=True)
        latest = resolve_version(self.root, LATEST)
        if latest and metrics is not None:  # a restarted daemon reports what is already published
            manifest = read_manifest(self.root / latest)
            metrics.snapshot_version.set(manifest["version"])
            metrics.snapshot_last_publish_timestamp.set(manifest["created_at_unix"])

    def latest_version(self) -> int | None:
        name = resolve_version(self.root, LATEST)
        return int(name[1:]) if name else None

    def publish(self, learner, *, reason: str, task: int, segment: int, positions: dict,
                probe: dict | None = None) -> dict | None:
        """Writes the next version and returns its manifest; on OSError logs, counts and returns None."""
        started = time.perf_counter()
        tmp = None
        try:
            versions = list_versions(self.root)
            number = int(versions[-1][1:]) + 1 if versions else 1
            tmp = durable.temp_folder(self.root, TMP_PREFIX, mode=0o755)  # consumers run as other uids
            manifest = self._write(tmp, learner, number, versions, reason=reason, task=task, segment=segment,
                                   positions=positions, probe=probe, gate=self._judge(probe))
            durable.move_into_place(tmp, self.root / version_name(number))
            tmp = None
            if manifest["gate"]["passed"]:
                move_alias(self.root, LATEST, version_name(number), "publish", "daemon")
        except OSError:
            log.exception("snapshot publish failed (reason=%s, task=%d); earlier snapshots are intact", reason, task)
            if self.metrics is not None:
                self.metrics.snapshot_failures.inc()
            return None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        self._prune()
        if not manifest["gate"]["passed"]:
            log.warning("snapshot %s published as a candidate only, latest stays %s: %s", version_name(number),
                        resolve_version(self.root, LATEST), "; ".join(manifest["gate"]["failures"]))
            if self.metrics is not None:
                self.metrics.snapshot_gate_rejections.inc()
            return manifest
        if self.metrics is not None:
            self.metrics.snapshot_version.set(number)
            self.metrics.snapshot_last_publish_timestamp.set(manifest["created_at_unix"])
        log.info("published snapshot %s (reason=%s, task=%d) in %.3f s", version_name(number), reason, task,
                 time.perf_counter() - started)
        return manifest

    def _judge(self, probe: dict | None) -> dict:
        """The gate's verdict against the probe of the version latest names now."""
        if self.gate is None:
            return {"passed": True, "failures": [], "checked": []}
        latest = resolve_version(self.root, LATEST)
        latest_probe = _manifest_field(self.root / latest, "probe") if latest else None
        return self.gate.judge(probe, latest_probe)

    def _write(self, folder: Path, learner, number: int, versions: list[str], **fields) -> dict:
        encoder = learner.encoder
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in encoder.export_state_dict().items()}
        config = encoder_config(encoder)
        blobs = {MODEL: safetensors.torch.save(tensors, metadata={"format": "pt"}),
                 CONFIG: json.dumps(config, indent=2).encode()}
        now = datetime.now(timezone.utc)
        k = encoder.frozen_blocks
        manifest = {
            "version": number, "name": version_name(number),
            "created_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "created_at_unix": now.timestamp(),
            "files": {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()},
            "parent": versions[-1] if versions else None,
            "reason": fields["reason"], "task": fields["task"], "segment": fields["segment"],
            "step": learner.step_count,
            "frozen_blocks": {"count": k, "names": encoder.block_names[:k]},
            "positions": fields["positions"], "probe": fields["probe"], "gate": fields["gate"],
            "libraries": library_versions(),
        }
        manifest = json.loads(json.dumps(manifest, default=str))   # as readers will see it (string keys)
        blobs[CARD] = model_card(manifest, config, self.training).encode()
        for name, blob in blobs.items():
            durable.write_synced(folder / name, lambda f, blob=blob: f.write(blob))
        manifest["files"] = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
        text = json.dumps(manifest, indent=2).encode()
        durable.write_synced(folder / MANIFEST, lambda f: f.write(text))
        return manifest

    def _prune(self) -> None:
        """Keeps the newest ``keep_last`` versions, the newest ``keep_task_end`` task-end snapshots (all
        when 0) and every version an alias names (``latest``, or one an operator promoted); clears temp folders."""
        versions = list_versions(self.root)
        task_ends = [name for name in versions if _manifest_field(self.root / name, "reason") == "task_end"]
        aliased = {resolve_version(self.root, p.name) for p in self.root.iterdir() if ALIAS_RE.match(p.name)}
        keep = set(versions[-self.keep_last:]) | aliased
        keep |= set(task_ends[-self.keep_task_end:] if self.keep_task_end else task_ends)
        pruned = [name for name in versions if name not in keep]
        for name in pruned:
            durable.discard_folder(self.root / name, TMP_PREFIX)
        if pruned:
            log.info("retention pruned snapshot(s) %s", ", ".join(pruned))
            if self.metrics is not None:
                self.metrics.snapshots_pruned.inc(len(pruned))
        durable.clear_leftovers(self.root, TMP_PREFIX)


def _manifest_field(folder: Path, field: str):
    try:
        return read_manifest(folder).get(field)
    except (OSError, ValueError):
        return None
