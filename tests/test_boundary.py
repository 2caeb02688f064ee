"""Task boundaries: header names -> consecutive ids, drift found on a shift and quiet when stationary,
the detector's state survives a checkpoint round trip."""
from __future__ import annotations

import io
import json

import torch

from streamd.bench.boundaries import score
from streamd.service.boundary import BoundaryDetector, DriftDetector, mmd2_rbf
from streamd.cli import main as streamd_main
from streamd.config import BoundaryConfig

BATCH = 32
PROJECTION = torch.randn(3 * 8 * 8, 32, generator=torch.Generator().manual_seed(1))


def embed(images: torch.Tensor) -> torch.Tensor:
    """A fixed random projection: enough of an 'encoder' for a distribution shift to show."""
    return images.float().flatten(1) @ PROJECTION


def batches(prototype: int, n: int, seed: int) -> list[torch.Tensor]:
    """Noisy copies of one of two prototype images (uint8 3x8x8)."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.randint(40, 216, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float()
    noise = torch.randn(n * BATCH, 3, 8, 8, generator=gen) * 40
    return list((protos[prototype] + noise).clamp(0, 255).to(torch.uint8).split(BATCH))


def detector(**overrides) -> BoundaryDetector:
    opts = BoundaryConfig(mode="drift", window=BATCH, **overrides).model_dump(exclude={"mode"})
    return BoundaryDetector("drift", **opts)


def alarms(det: BoundaryDetector, stream: list[torch.Tensor]) -> list[int]:
    return [i for i, x in enumerate(stream) if det.observe(x, None, f"b@{i}", embed) is not None]


def test_mmd_is_near_zero_for_one_distribution_and_large_across_two():
    a1, a2, b = batches(0, 1, 1)[0], batches(0, 1, 2)[0], batches(1, 1, 3)[0]
    same, diff = mmd2_rbf(embed(a1), embed(a2)), mmd2_rbf(embed(a1), embed(b))
    assert abs(same) < 0.05 < diff


def test_drift_finds_each_shift_within_two_batches_and_stays_quiet_when_stationary():
    stream = batches(0, 20, 10) + batches(1, 15, 11) + batches(0, 15, 12)
    det = detector()
    found = alarms(det, stream)
    assert found and all(0 <= a - s <= 2 for a, s in zip(found, [20, 35])) and len(found) == 2
    assert [b.task for b in det.boundaries] == [1, 2] and det.boundaries[0].kind == "drift"
    assert det.boundaries[0].position == f"b@{found[0]}" and det.boundaries[0].statistic > 0

    quiet = detector()
    assert alarms(quiet, batches(0, 60, 20)) == []


def test_min_segment_and_cooldown_hold_back_alarms():
    det = detector(min_segment_batches=12, cooldown_batches=0)
    found = alarms(det, batches(0, 6, 30) + batches(1, 14, 31))
    assert found == [11], "the shift at batch 6 may end the segment only once it is 12 batches long"


def test_headers_map_to_consecutive_persistent_ids_and_the_first_task_is_no_boundary():
    det = BoundaryDetector("header")
    x = batches(0, 1, 40)[0]
    for header in ["a", "a", "b", "c", "b", "b"]:
        det.observe(x, header, f"pos-{header}", embed)
    assert det.task_ids == {"a": 0, "b": 1, "c": 2} and det.task == 1
    assert [(b.name, b.task, b.batch) for b in det.boundaries] == [("b", 1, 2), ("c", 2, 3), ("b", 1, 4)]
    restored = BoundaryDetector("header")
    restored.load_state_dict(det.state_dict())
    assert restored.observe(x, "d", "pos-d", embed).task == 3 and restored.observe(x, "a", "p", embed).task == 0


def test_both_mode_uses_headers_when_present_and_drift_without():
    det = BoundaryDetector("both", **BoundaryConfig(window=BATCH).model_dump(exclude={"mode"}))
    for x in batches(0, 10, 50):
        det.observe(x, "t0", "p", embed)
    assert det.boundaries == []
    det.observe(batches(1, 1, 51)[0], "t1", "p1", embed)
    assert [b.kind for b in det.boundaries] == ["header"]
    found = alarms(det, batches(1, 10, 52) + batches(0, 6, 53))
    assert [b.kind for b in det.boundaries] == ["header", "drift"] and found and found[0] >= 10


def test_state_round_trip_through_a_weights_only_checkpoint_continues_identically():
    stream = batches(0, 12, 60) + batches(1, 8, 61)
    original = detector()
    alarms(original, stream[:10])
    buf = io.BytesIO()
    torch.save(original.state_dict(), buf)
    restored = detector()
    restored.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    rest = stream[10:]
    assert alarms(original, rest) == alarms(restored, rest) != []
    assert original.drift.last_statistic == restored.drift.last_statistic


def test_drift_detector_reservoir_is_bounded():
    det = DriftDetector(window=BATCH, reference_size=48)
    for x in batches(0, 10, 70):
        det.update(x, embed)
    assert len(det.reference) == 48 and len(det.window) == BATCH and det.offered == 9 * BATCH


def test_bench_scores_delays_misses_and_false_alarms():
    result = score(alarms=[3, 17, 18, 41], starts=[16, 32, 40], n_batches=60, max_delay=2)
    assert result["delays"] == [1, 1] and result["missed"] == 1 and result["false"] == 2


def test_bench_boundaries_finds_the_class_boundary_of_real_digits(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert streamd_main(["bench", "boundaries", "--dataset", "digits", "--splits", "class", "--tasks", "2",
                         "--runs", "1", "--no-train", "--detector", '{"reference_size": 128}',
                         "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["summary"]["class"]["found"] == 1 and report["summary"]["class"]["false"] == 0
    assert report["runs"][0]["delays"][0] <= report["max_delay"]
