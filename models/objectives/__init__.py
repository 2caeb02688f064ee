"""SSL objectives by name (the ``OBJECTIVES`` registry); configuration picks one without touching the loop."""
from __future__ import annotations

from streamd.models.encoders import Encoder
from streamd.models.objectives.base import OBJECTIVES, MomentumObjective, Objective, ObjectiveOutput
from streamd.models.objectives import methods  # noqa: F401 -- registers the objectives


def build_objective(name: str, encoder: Encoder, **kwargs) -> Objective:
    return OBJECTIVES.lookup(name)(encoder, **kwargs)


__all__ = ["OBJECTIVES", "Objective", "ObjectiveOutput", "MomentumObjective", "build_objective"]
