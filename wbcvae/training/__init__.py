"""Training plans (LightningModules) for the two β-VAEs, their dashboards, loggers and CLI."""

from wbcvae.training.image_plan import ImageVAEPlan
from wbcvae.training.rna_plan import RnaVAEPlan

__all__ = ["ImageVAEPlan", "RnaVAEPlan"]
