"""A real Prometheus server scrapes an ApiServer and returns its streamd_ series through the query API."""
from prometheus_fixtures import query, running_prometheus, wait_until
from streamd.api import ApiServer
from streamd.metrics import Metrics


def test_prometheus_scrapes_the_api_and_serves_streamd_series(tmp_path):
    metrics = Metrics()
    metrics.training_steps.inc(7)
    metrics.records_dead_lettered.labels("corrupt").inc(3)
    metrics.probe_accuracy.labels("2").set(0.75)
    api = ApiServer("127.0.0.1", 0, tmp_path / "snapshots", metrics, ready=lambda: True, token="t0ken")
    api.start()
    try:
        with running_prometheus([f"127.0.0.1:{api.port}"], tmp_path / "prom") as prom:
            steps = wait_until(lambda: query(prom, "streamd_training_steps_total"), 30, "the first scrape")
            assert float(steps[0]["value"][1]) == 7 and steps[0]["metric"]["job"] == "streamd"
            metrics.training_steps.inc(5)  # a later scrape sees the change
            wait_until(lambda: float(query(prom, "streamd_training_steps_total")[0]["value"][1]) == 12, 15, "rescrape")
            dead = query(prom, 'streamd_records_dead_lettered_total{reason="corrupt"}')
            assert float(dead[0]["value"][1]) == 3
            assert float(query(prom, 'streamd_probe_accuracy_ratio{task="2"}')[0]["value"][1]) == 0.75
            assert query(prom, "streamd_build_info")[0]["metric"]["version"]
            assert float(query(prom, 'up{job="streamd"}')[0]["value"][1]) == 1
    finally:
        api.stop()
