"""Alert rules, Prometheus config and Grafana dashboard, checked with the real promtool."""
import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from streamd.service.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=PROM, capture_output=True, text=True, timeout=60)


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_checks_rules_and_config():
    for args in [("check", "rules", "alerts.yml"), ("check", "config", "prometheus.yml")]:
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_firing_and_a_non_firing_case():
    listed = [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    rules, exprs = [r["alert"] for r in listed], {r["alert"]: r["expr"] for r in listed}
    cases = [c for t in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"] for c in t["alert_rule_test"]]
    assert len(rules) >= 8 and len(set(rules)) == len(rules)
    for rule in rules:
        mine = [c for c in cases if c["alertname"] == rule]
        assert any(c["exp_alerts"] for c in mine), f"{rule} has no firing case"
        assert any(not c["exp_alerts"] for c in mine), f"{rule} has no case where nothing fires"
        # the firing case also holds a series that must not fire at the same time
        fired = {a["exp_labels"].get("instance") for c in mine for a in c["exp_alerts"]}
        expected = {None} if exprs[rule].startswith("absent(") else {"bad"}   # absent() has no instance to name
        assert fired == expected, f"{rule}: only the 'bad' series may fire, got {fired}"


def exposed_names() -> set[str]:
    metrics = Metrics()
    for family in (metrics.records_dead_lettered, metrics.probe_accuracy, metrics.probe_forgetting,
                   metrics.representation_drift):
        family.labels("x")
    metrics.plugin_value.labels("p", "n")
    return set(re.findall(r"^(streamd_\w+)", generate_latest(metrics.registry).decode(), re.M))


def test_alerts_and_dashboard_only_use_metrics_the_daemon_exposes():
    exposed = exposed_names()
    dashboard = json.loads((GRAFANA / "dashboards" / "streamd.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used_by_dashboard = set(re.findall(r"streamd_\w+", " ".join(exprs)))
    used_by_alerts = set(re.findall(r"streamd_\w+", (PROM / "alerts.yml").read_text()))
    assert used_by_dashboard - exposed == set() and used_by_alerts - exposed == set()
    # the dashboard covers every metric family (histograms by their buckets)
    families = {n for n in exposed if not n.endswith(("_created", "_count", "_sum"))}
    assert families - used_by_dashboard - {"streamd_build_info"} == set()


def test_grafana_provisioning_points_at_the_dashboard_and_datasource():
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in datasource["datasources"]}
    dashboard = json.loads((GRAFANA / "dashboards" / "streamd.json").read_text())
    used = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert used == {"prometheus"} <= uids
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "streamd.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"  # where deploy/compose.yaml mounts them


ALERTMANAGER = PROM.parent / "alertmanager" / "alertmanager.yml"


def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["amtool", *args], capture_output=True, text=True, timeout=60)


def test_alertmanager_config_is_valid_and_pages_for_criticals_only():
    check = amtool("check-config", str(ALERTMANAGER))
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    severities = {r["labels"]["severity"] for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
                  for r in g["rules"]}
    assert severities == {"critical", "warning"}
    routed = {s: amtool("config", "routes", "test", f"--config.file={ALERTMANAGER}", f"severity={s}",
                        "alertname=StreamdCheckpointFailing").stdout.strip() for s in severities}
    assert routed == {"critical": "streamd-oncall", "warning": "streamd-warnings"}


def test_prometheus_sends_alerts_to_the_compose_alertmanager():
    targets = [t for am in yaml.safe_load((PROM / "prometheus.yml").read_text())["alerting"]["alertmanagers"]
               for sc in am["static_configs"] for t in sc["targets"]]
    compose = yaml.safe_load((PROM.parent / "compose.yaml").read_text())["services"]["alertmanager"]
    mounted = {m.split(":")[0]: m.split(":")[1] for m in compose["volumes"]}
    assert targets == ["alertmanager:9093"] and "9093:9093" in compose["ports"]
    assert mounted["./alertmanager/alertmanager.yml"] in compose["command"][0]
