"""String-keyed registry of SSL objectives; configuration picks one without touching the loop."""
from __future__ import annotations

from streamd.models.encoders import Encoder
from streamd.models.objectives.base import MomentumObjective, Objective, ObjectiveOutput
from streamd.models.objectives.methods import BYOL, BarlowTwins, MoCoV3, SimCLR, SimSiam, VICReg

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (SimCLR, SimSiam, BYOL, BarlowTwins, VICReg, MoCoV3)
}


def build_objective(name: str, encoder: Encoder, **kwargs) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](encoder, **kwargs)


__all__ = ["OBJECTIVES", "Objective", "ObjectiveOutput", "MomentumObjective", "build_objective"]
