import json
import pickle
import time

import pytest
import torch
from torchvision.models import ResNet, VisionTransformer

from publishing_fixtures import encoder_output, images, tiny_learner
from streamd.service.api import ApiServer
from streamd.cli import main as streamd_main
from streamd.client import SnapshotIntegrityError, load_encoder, pull, verify
from streamd.errors import UnreachableError
from streamd.service.metrics import Metrics
from streamd.service.snapshots import SnapshotPublisher


def publish(root, learner, count=1):
    pub = SnapshotPublisher(root)
    for _ in range(count):
        manifest = pub.publish(learner, reason="steps", task=0, segment=0, positions={})
    return manifest


@pytest.fixture(scope="module")
def learner():
    return tiny_learner()


@pytest.fixture
def server(tmp_path):
    api = ApiServer("127.0.0.1", 0, tmp_path / "snapshots", Metrics(), ready=lambda: True)
    api.start()
    yield api
    api.stop()


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any attempt to unpickle while loading fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the client must never unpickle")

    for target, name in [(pickle, "load"), (pickle, "loads"), (torch, "load")]:
        monkeypatch.setattr(target, name, refuse)


def test_load_encoder_from_folder_is_plain_torchvision_with_equal_outputs(tmp_path, learner, no_unpickling):
    publish(tmp_path, learner, count=2)
    module = load_encoder(tmp_path)  # the root: resolves `latest`
    assert isinstance(module, ResNet) and isinstance(module.fc, torch.nn.Identity)
    assert module.state_dict().keys() == learner.encoder.export_state_dict().keys()
    x = images()
    with torch.no_grad():
        assert torch.equal(module(learner.preprocess(x)), encoder_output(learner, x))
    assert torch.equal(load_encoder(tmp_path, "v000001")(learner.preprocess(x)), encoder_output(learner, x))


def test_load_encoder_over_http_equals_learner(server, learner, no_unpickling):
    publish(server.app.state.snapshot_root, learner)
    module = load_encoder(f"http://127.0.0.1:{server.port}")
    x = images()
    with torch.no_grad():
        assert torch.equal(module(learner.preprocess(x)), encoder_output(learner, x))


def test_vit_snapshot_loads_as_torchvision_vit(tmp_path):
    vit = tiny_learner("vit_small", 16, encoder_kwargs={"num_layers": 1, "hidden_dim": 48, "num_heads": 3,
                                                        "mlp_dim": 96})
    publish(tmp_path, vit)
    module = load_encoder(tmp_path)
    assert isinstance(module, VisionTransformer)
    x = images()
    with torch.no_grad():
        assert torch.equal(module(vit.preprocess(x)), encoder_output(vit, x))


def test_corrupted_file_fails_sha256_check_naming_the_file(tmp_path, learner, server):
    publish(tmp_path, learner)
    model = tmp_path / "v000001" / "model.safetensors"
    blob = bytearray(model.read_bytes())
    blob[-1] ^= 0xFF
    model.write_bytes(bytes(blob))
    with pytest.raises(SnapshotIntegrityError, match=r"sha256 mismatch for model\.safetensors"):
        load_encoder(tmp_path)
    served = server.app.state.snapshot_root
    publish(served, learner)
    (served / "v000001" / "config.json").write_text('{"arch": "resnet50"}')
    with pytest.raises(SnapshotIntegrityError, match=r"sha256 mismatch for config\.json"):
        load_encoder(f"http://127.0.0.1:{server.port}")


def test_manifest_naming_paths_outside_the_snapshot_is_refused(server, learner, tmp_path):
    root = server.app.state.snapshot_root
    publish(root, learner)
    manifest_path = root / "v000001" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../../escaped.txt"] = manifest["files"]["config.json"]
    manifest_path.write_text(json.dumps(manifest))
    out = tmp_path / "a" / "b"
    with pytest.raises(SnapshotIntegrityError, match="invalid version or file names"):
        pull(f"http://127.0.0.1:{server.port}", out_dir=out)
    with pytest.raises(SnapshotIntegrityError, match="invalid version or file names"):
        load_encoder(root)
    assert not (tmp_path / "escaped.txt").exists() and not out.exists()  # refused before the folder is made


def test_pull_command_from_http_and_folder(server, learner, tmp_path):
    publish(server.app.state.snapshot_root, learner, count=3)
    out = tmp_path / "pulled"
    assert streamd_main(["pull", f"http://127.0.0.1:{server.port}", "--version", "v000002", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "manifest.json", "model.safetensors"]
    x = images()
    with torch.no_grad():
        assert torch.equal(load_encoder(out)(learner.preprocess(x)), encoder_output(learner, x))
    again = pull(out, out_dir=tmp_path / "copy")  # a snapshot folder is also a source
    assert (again / "manifest.json").read_text() == (out / "manifest.json").read_text()


def counting_server(root, failures: int = 0):
    """An API over ``root`` that records each request's path and status, and answers the first
    ``failures`` requests 503 (a restarting server)."""
    from starlette.responses import Response as StarletteResponse

    seen: list[tuple[str, int]] = []
    api = ApiServer("127.0.0.1", 0, root, Metrics(), ready=lambda: True, token=None)

    @api.app.middleware("http")
    async def record(request, call_next):
        if len(seen) < failures:
            seen.append((request.url.path, 503))
            return StarletteResponse(status_code=503)
        response = await call_next(request)
        seen.append((request.url.path, response.status_code))
        return response

    return api, seen


def test_a_repeated_pull_downloads_nothing_and_a_changed_latest_only_its_new_files(tmp_path):
    root = tmp_path / "snapshots"
    pub = SnapshotPublisher(root)
    learner = tiny_learner()
    pub.publish(learner, reason="steps", task=0, segment=0, positions={})
    api, seen = counting_server(root)
    api.start()
    try:
        url, cache = f"http://127.0.0.1:{api.port}", tmp_path / "cache"
        pull(url, "latest", tmp_path / "a", cache_dir=cache)
        files = {p for p, code in seen if "/files/" in p and code == 200}
        assert len(files) == 3   # model, config, card
        seen.clear()
        pull(url, "latest", tmp_path / "b", cache_dir=cache)
        assert seen == [("/v1/snapshots/latest", 304)]          # one conditional request, no file
        verify(tmp_path / "b", json.loads((tmp_path / "b" / "manifest.json").read_text()))
        pub.publish(learner, reason="steps", task=1, segment=1, positions={})   # same weights, new card
        seen.clear()
        pull(url, "latest", tmp_path / "c", cache_dir=cache)
        assert [p for p, _ in seen] == ["/v1/snapshots/latest", "/v1/snapshots/v000002/files/README.md"]
        for blob in (cache / "blobs").rglob("*"):
            if blob.is_file():
                blob.write_bytes(b"rotted")                           # a cache that went bad is not trusted
        seen.clear()
        pull(url, "v000002", tmp_path / "d", cache_dir=cache)
        assert len([p for p, code in seen if "/files/" in p and code == 200]) == 3
    finally:
        api.stop()


def test_pull_retries_a_busy_server_with_backoff(tmp_path):
    root = tmp_path / "snapshots"
    SnapshotPublisher(root).publish(tiny_learner(), reason="steps", task=0, segment=0, positions={})
    api, seen = counting_server(root, failures=2)
    api.start()
    try:
        started = time.monotonic()
        pull(f"http://127.0.0.1:{api.port}", "latest", tmp_path / "out", cache_dir=False)
        assert [code for _, code in seen][:3] == [503, 503, 200] and time.monotonic() - started >= 1.5   # 0.5 + 1 s
    finally:
        api.stop()
    api, seen = counting_server(root, failures=10)
    api.start()
    try:
        with pytest.raises(UnreachableError, match="503"):
            pull(f"http://127.0.0.1:{api.port}", "latest", tmp_path / "never", cache_dir=False)
        assert len(seen) == 4   # ATTEMPTS, then a clear error
    finally:
        api.stop()
