"""The SSL methods: each adds its heads and picks its loss (defaults follow the papers)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from streamd.models.heads import mlp
from streamd.models.objectives import losses
from streamd.models.objectives.base import OBJECTIVES, MomentumObjective, Objective


@OBJECTIVES.register("simclr")
class SimCLR(Objective):
    def __init__(self, encoder, proj_hidden: int = 2048, proj_dim: int = 128, temperature: float = 0.2):
        super().__init__(encoder)
        self.projector = mlp([encoder.feature_dim, proj_hidden, proj_dim])
        self.temperature = temperature

    def loss(self, z1, z2, v1, v2):
        return losses.nt_xent(z1, z2, self.temperature)

    def distill_loss(self, predicted, frozen):
        return losses.nt_xent(predicted, frozen, 0.2)


@OBJECTIVES.register("simsiam")
class SimSiam(Objective):
    def __init__(self, encoder, proj_hidden: int = 2048, proj_dim: int = 2048, pred_hidden: int = 512):
        super().__init__(encoder)
        self.projector = mlp([encoder.feature_dim, proj_hidden, proj_dim], last_bn=True, last_bn_affine=False)
        self.predictor = mlp([proj_dim, pred_hidden, proj_dim])

    def loss(self, z1, z2, v1, v2):
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        return 0.5 * (losses.negative_cosine(p1, z2) + losses.negative_cosine(p2, z1))

    def distill_loss(self, predicted, frozen):
        return losses.negative_cosine(predicted, frozen)


@OBJECTIVES.register("byol")
class BYOL(MomentumObjective):
    def __init__(self, encoder, proj_hidden: int = 4096, proj_dim: int = 256, pred_hidden: int = 4096, tau: float = 0.99):
        super().__init__(encoder, tau)
        self.projector = mlp([encoder.feature_dim, proj_hidden, proj_dim])
        self.predictor = mlp([proj_dim, pred_hidden, proj_dim])
        self.build_target()

    def loss(self, z1, z2, v1, v2):
        t1, t2 = self.targets(v1, v2)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        return (2 - 2 * F.cosine_similarity(p1, t2, dim=-1).mean()) + (2 - 2 * F.cosine_similarity(p2, t1, dim=-1).mean())

    def distill_loss(self, predicted, frozen):
        return 2 - 2 * F.cosine_similarity(predicted, frozen.detach(), dim=-1).mean()


@OBJECTIVES.register("mocov3")
class MoCoV3(MomentumObjective):
    def __init__(self, encoder, proj_hidden: int = 4096, proj_dim: int = 256, pred_hidden: int = 4096,
                 temperature: float = 0.2, tau: float = 0.99):
        super().__init__(encoder, tau)
        self.projector = mlp([encoder.feature_dim, proj_hidden, proj_dim], last_bn=True, last_bn_affine=False)
        self.predictor = mlp([proj_dim, pred_hidden, proj_dim])
        self.temperature = temperature
        self.build_target()

    def loss(self, z1, z2, v1, v2):
        t1, t2 = self.targets(v1, v2)
        q1, q2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        return losses.info_nce(q1, t2, self.temperature) + losses.info_nce(q2, t1, self.temperature)

    def distill_loss(self, predicted, frozen):
        return losses.nt_xent(predicted, frozen, 0.2)


@OBJECTIVES.register("barlow")
class BarlowTwins(Objective):
    def __init__(self, encoder, proj_hidden: int = 2048, proj_dim: int = 2048, lambd: float = 0.0051, scale: float = 0.1):
        super().__init__(encoder)
        self.projector = mlp([encoder.feature_dim, proj_hidden, proj_hidden, proj_dim])
        self.lambd, self.scale = lambd, scale

    def loss(self, z1, z2, v1, v2):
        return losses.barlow_twins(z1, z2, self.lambd, self.scale)

    def distill_loss(self, predicted, frozen):
        return losses.barlow_twins(predicted, frozen.detach(), self.lambd, self.scale)


@OBJECTIVES.register("vicreg")
class VICReg(Objective):
    def __init__(self, encoder, proj_hidden: int = 2048, proj_dim: int = 2048):
        super().__init__(encoder)
        self.projector = mlp([encoder.feature_dim, proj_hidden, proj_hidden, proj_dim])

    def loss(self, z1, z2, v1, v2):
        return losses.vicreg(z1, z2)

    def distill_loss(self, predicted, frozen):
        return 25.0 * F.mse_loss(predicted, frozen.detach())
