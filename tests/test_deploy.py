"""The deployment artefacts stay valid: Dockerfile (hadolint), compose stack (docker-compose config),
Kubernetes manifests (JSON-schema check), and every configuration they carry loads into StreamdConfig
and writes only where a volume is mounted. tests/container/ builds and runs the image itself.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from streamd.cli import build_parser
from streamd.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
STATE = "/var/lib/streamd"   # the image's STREAMD_STATE_DIR and its one volume


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


@functools.cache
def compose_config(*files: str) -> dict:
    args = [a for f in files for a in ("-f", str(DEPLOY / f))]
    out = run(shutil.which("docker-compose") or "docker-compose", *args, "config")
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def volume(spec: str | dict) -> tuple[str, str]:
    """(source, target) of a compose volume in either the short or the long syntax."""
    if isinstance(spec, dict):
        return spec.get("source", ""), spec["target"]
    source, target = spec.split(":")[:2]
    return source, target


def streamd_env_topic(services: dict) -> str:
    return services["streamd"]["environment"]["STREAMD_SOURCE__KAFKA__TOPIC"]


def k8s_docs() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name'] if 'metadata' in doc else path.stem}"] = doc
    return docs


# Dockerfile -----------------------------------------------------------------------------------
def test_hadolint_passes():
    out = run(str(BIN / "hadolint"), "Dockerfile")
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_runs_the_daemon_as_non_root_with_state_volumes_and_healthcheck():
    ins = dockerfile_instructions()
    last = {k: v for k, v in ins}
    user = last["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert yaml.safe_load(last["ENTRYPOINT"]) == ["streamd", "run"]
    assert yaml.safe_load(last["VOLUME"]) == [STATE]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(v for k, v in ins if k == "ENV")))
    assert env["STREAMD_STATE_DIR"] == STATE
    assert "/healthz" in last["HEALTHCHECK"] and "9400" in last["HEALTHCHECK"]
    assert "curl" not in last["HEALTHCHECK"]  # not in the slim base image


def test_dockerfile_installs_the_pyproject_dependencies_under_a_complete_constraints_file():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = project["dependencies"] + project["optional-dependencies"]["daemon"]
    pins = {d.split("==")[0]: d for d in runtime if "==" in d}
    runs = " ".join(v for k, v in dockerfile_instructions() if k == "RUN")
    assert 'p["dependencies"] + p["optional-dependencies"]["daemon"]' in runs
    assert "--constraint constraints.txt --requirement" in runs
    assert "[test" not in runs and "[bench" not in runs   # the runtime image has no test or bench extras
    constraints = {ln.split("==")[0]: ln for ln in (DEPLOY / "constraints.txt").read_text().splitlines()
                   if "==" in ln}
    for name, pin in pins.items():
        assert constraints.get(name) == pin
    for dep in runtime:
        name = re.split(r"[<>=~!\[ ]", dep, maxsplit=1)[0].lower().replace("_", "-")
        assert name in constraints, f"{name} has no pinned version in deploy/constraints.txt"


def test_dockerignore_keeps_every_path_the_dockerfile_copies():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    kept = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    for kind, args in dockerfile_instructions():
        if kind == "COPY":
            for src in args.split()[:-1]:
                assert src.rstrip("/") in kept and (ROOT / src).exists(), src


# Compose --------------------------------------------------------------------------------------
def test_compose_stack_is_accepted_and_complete():
    services = compose_config("compose.yaml")["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft
    producer = services["demo-producer"]
    assert producer["entrypoint"][:3] == ["streamd", "produce", "kafka"]
    assert producer["restart"] == "no"
    args = build_parser().parse_args(producer["entrypoint"][1:] + producer["command"])
    assert args.bootstrap_servers == "kafka:29092" and args.topic == streamd_env_topic(services)
    streamd = services["streamd"]
    assert STATE in {volume(v)[1] for v in streamd["volumes"]} and streamd["read_only"] is True


def test_compose_mounts_the_prometheus_rules_and_grafana_provisioning_that_exist():
    services = compose_config("compose.yaml")["services"]
    mounts = {Path(source).resolve(): target for name in ("prometheus", "grafana")
              for source, target in map(volume, services[name]["volumes"]) if source.startswith("/")}
    alerts = (DEPLOY / "prometheus" / "alerts.yml").resolve()
    assert mounts.get(alerts) == "/etc/prometheus/alerts.yml"
    prom_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert any(Path(r).name == "alerts.yml" for r in prom_cfg["rule_files"])
    targets = [t for job in prom_cfg["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]]
    assert "streamd:9400" in targets
    provisioning = (DEPLOY / "grafana" / "provisioning").resolve()
    assert mounts.get(provisioning) == "/etc/grafana/provisioning"
    for source in mounts:
        assert source.exists(), f"compose mounts {source}, which does not exist"


def test_compose_gpu_override_reserves_a_gpu():
    streamd = compose_config("compose.yaml", "compose.gpu.yaml")["services"]["streamd"]
    devices = streamd["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert streamd["environment"]["STREAMD_LEARNER__DEVICE"] == "cuda"


def test_compose_streamd_environment_is_a_valid_config(monkeypatch):
    env = compose_config("compose.yaml")["services"]["streamd"]["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    cfg = load_config()
    assert cfg.source.kind == "kafka"
    assert cfg.source.kafka.bootstrap_servers == env["STREAMD_SOURCE__KAFKA__BOOTSTRAP_SERVERS"]
    assert cfg.dead_letter.kind == "kafka"


# Kubernetes -----------------------------------------------------------------------------------
def test_k8s_manifests_pass_the_schema_check():
    core = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name not in ("kustomization.yaml", "podmonitor.yaml")]
    out = run(str(BIN / "kubernetes-validate"), "--strict", "--quiet", *core)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ERROR" not in out.stdout + out.stderr


def test_k8s_statefulset_wiring():
    docs = k8s_docs()
    sts = docs["StatefulSet/streamd"]
    pod = sts["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert [path for name, path in mounts.items() if name in claims] == [STATE]
    assert docs[f"Service/{sts['spec']['serviceName']}"]["spec"]["clusterIP"] == "None"
    secret_ref = next(e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "STREAMD_API__TOKEN")
    assert secret_ref["key"] in docs[f"Secret/{secret_ref['name']}"]["stringData"]
    labels = pod["metadata"]["labels"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9400"
    monitor = docs["PodMonitor/streamd"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in container["ports"]}
    assert all(ep["port"] in ports for ep in monitor["podMetricsEndpoints"])
    assert {p["targetPort"] for p in docs["Service/streamd"]["spec"]["ports"]} <= ports
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert all((K8S / r).exists() for r in listed)


def test_k8s_configmap_toml_is_a_valid_config(tmp_path):
    docs = k8s_docs()
    container = docs["StatefulSet/streamd"]["spec"]["template"]["spec"]["containers"][0]
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    mounts = {m["name"]: Path(m["mountPath"]) for m in container["volumeMounts"]}
    assert config_path.parent == mounts["config"]
    toml = docs["ConfigMap/streamd-config"]["data"][config_path.name]
    (tmp_path / "streamd.toml").write_text(toml)
    cfg = load_config(tmp_path / "streamd.toml")
    assert cfg.source.kind == "kafka"
    for state_dir in (cfg.checkpoint.dir, cfg.snapshots.dir):  # on the persistent volume
        assert state_dir.is_relative_to(mounts["state"])
    assert cfg.api.host == "0.0.0.0" and cfg.api.port == 9400


def test_k8s_every_path_the_daemon_writes_is_on_a_writable_volume(tmp_path, monkeypatch):
    """The effective config (image ENV < ConfigMap TOML < pod env) against the pod's mounts: with a
    read-only root filesystem, a write anywhere else fails at run time, not at deploy time."""
    docs = k8s_docs()
    container = docs["StatefulSet/streamd"]["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    image_env = dict(re.findall(r"(\w+)=(\S+)", " ".join(v for k, v in dockerfile_instructions() if k == "ENV")))
    for key, value in image_env.items():
        if key.startswith("STREAMD_"):
            monkeypatch.setenv(key, value)
    for item in container.get("env", []):
        monkeypatch.setenv(item["name"], item.get("value", "a-secret"))
    args = container["args"]
    toml = docs["ConfigMap/streamd-config"]["data"][Path(args[args.index("--config") + 1]).name]
    (tmp_path / "streamd.toml").write_text(toml)
    cfg = load_config(tmp_path / "streamd.toml")
    writable = [Path(m["mountPath"]) for m in container["volumeMounts"] if not m.get("readOnly")]
    paths = cfg.written_paths()
    assert {"checkpoint.dir", "snapshots.dir", "probe.history_dir"} <= paths.keys()
    outside = {name: p for name, p in paths.items() if not any(p.is_relative_to(w) for w in writable)}
    assert outside == {}
    # The same check sees a path that escapes the volumes.
    monkeypatch.setenv("STREAMD_PROBE__HISTORY_DIR", "/opt/streamd/history")
    assert not load_config(tmp_path / "streamd.toml").written_paths()["probe.history_dir"].is_relative_to(STATE)


def test_k8s_probes_need_no_token_and_startup_guards_liveness():
    """The kubelet sends no Authorization header; a long checkpoint restore must not trip liveness."""
    from streamd.service.api import OPEN_PATHS

    container = k8s_docs()["StatefulSet/streamd"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in OPEN_PATHS, probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_k8s_schema_check_rejects_a_broken_manifest(tmp_path):
    bad = (K8S / "statefulset.yaml").read_text().replace("replicas: 1", "replicas: one")
    (tmp_path / "sts.yaml").write_text(bad)
    out = run(str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(tmp_path / "sts.yaml"))
    assert out.returncode != 0
