import httpx
import pytest

from publishing_fixtures import tiny_learner
from streamd.service.api import ApiServer
from streamd.service.metrics import Metrics
from streamd.service.snapshots import SnapshotPublisher, sha256_file

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server with a token over a root holding two snapshots, and a secret file next to that root."""
    base = tmp_path_factory.mktemp("api")
    root = base / "snapshots"
    pub = SnapshotPublisher(root)
    learner = tiny_learner()
    for reason in ("task_end", "steps"):
        pub.publish(learner, reason=reason, task=0, segment=0, positions={})
    (base / "secret.txt").write_text("do not serve")
    state = {"ready": False}
    api = ApiServer("127.0.0.1", 0, root, Metrics(), ready=lambda: state["ready"], token=TOKEN)
    api.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{api.port}", timeout=10) as client:
        yield client, root, state
    api.stop()


def auth(**headers):
    return {"Authorization": f"Bearer {TOKEN}", **headers}


def test_token_required_everywhere_but_metrics_and_the_probes(served):
    """The kubelet's probes send no Authorization header: /healthz and /readyz must answer them."""
    client, _, state = served
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    state["ready"] = True
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "streamd_build_info" in metrics.text
    for path in ["/v1/snapshots", "/v1/snapshots/latest", "/v1/snapshots/v000001/files/config.json",
                 "/openapi.json", "/docs", "/no/such/path"]:
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    assert client.get("/v1/snapshots", headers=auth()).status_code == 200


def test_listing_and_manifests(served):
    client, root, _ = served
    listing = client.get("/v1/snapshots", headers=auth()).json()
    assert listing["latest"] == "v000002"
    assert [(s["name"], s["reason"]) for s in listing["snapshots"]] == [("v000001", "task_end"), ("v000002", "steps")]
    latest = client.get("/v1/snapshots/latest", headers=auth()).json()
    assert latest["version"] == 2 and latest["parent"] == "v000001"
    assert client.get("/v1/snapshots/v000001", headers=auth()).json()["version"] == 1
    assert client.get("/v1/snapshots/v000099", headers=auth()).status_code == 404
    paths = client.get("/openapi.json", headers=auth()).json()["paths"]
    assert {"/v1/snapshots", "/v1/snapshots/{version}", "/v1/snapshots/{version}/files/{name}", "/metrics"} <= set(paths)
    assert paths["/v1/snapshots/{version}/files/{name}"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in paths["/metrics"]["get"] and "security" not in paths["/healthz"]["get"]


def test_download_etag_304_and_range(served):
    client, root, _ = served
    path = root / "v000002" / "model.safetensors"
    url = "/v1/snapshots/latest/files/model.safetensors"
    full = client.get(url, headers=auth())
    assert full.status_code == 200 and full.content == path.read_bytes()
    assert full.headers["etag"] == f'"{sha256_file(path)}"'
    head = client.head(url, headers=auth())
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == full.headers["etag"]
    assert int(head.headers["content-length"]) == path.stat().st_size
    assert client.get(url, headers=auth(**{"If-None-Match": full.headers["etag"]})).status_code == 304
    assert client.get(url, headers=auth(**{"If-None-Match": '"other"'})).status_code == 200
    part = client.get(url, headers=auth(Range="bytes=8-23"))
    assert part.status_code == 206 and part.content == path.read_bytes()[8:24]
    assert part.headers["content-range"] == f"bytes 8-23/{path.stat().st_size}"


@pytest.mark.parametrize("path", [
    "/v1/snapshots/..%2Fsecret.txt",
    "/v1/snapshots/v000001/files/..%2F..%2Fsecret.txt",
    "/v1/snapshots/v000001/files/%2E%2E%2F%2E%2E%2Fsecret.txt",
    "/v1/snapshots/v000001/files/..%5C..%5Csecret.txt",
    "/v1/snapshots/latest/files/..%2Flatest",
    "/v1/snapshots/v000001/files/.",
    "/v1/snapshots/v1/files/model.safetensors",
    "/v1/snapshots/v0000011/files/model.safetensors",
    "/v1/snapshots/v000001/files/state.pt",
])
def test_path_traversal_and_unknown_names_are_rejected(served, path):
    client, _, _ = served
    response = client.get(path, headers=auth())
    assert response.status_code in (404, 422), response.status_code
    assert b"do not serve" not in response.content
