"""Differentiation paths: a GP from pseudotime to the joint latent, decoded into images and genes,
the genes clustered by the shape of their kinetics (k-Shape)."""

from wbcvae.trajectory.decode import DecodedPath, as_decoder, decode_path
from wbcvae.trajectory.gp import Anchors, LatentPathGP, Trajectory, class_anchors
from wbcvae.trajectory.kinetics import GeneKinetics, cluster_kinetics
from wbcvae.trajectory.presets import PRESETS, TrajectoryPreset, get_preset
from wbcvae.trajectory.recovery import GroundTruth
from wbcvae.trajectory.run import TrajectoryResult, TrajectorySettings, run_trajectory

__all__ = [
    "PRESETS",
    "Anchors",
    "DecodedPath",
    "GeneKinetics",
    "GroundTruth",
    "LatentPathGP",
    "Trajectory",
    "TrajectoryPreset",
    "TrajectoryResult",
    "TrajectorySettings",
    "as_decoder",
    "class_anchors",
    "cluster_kinetics",
    "decode_path",
    "get_preset",
    "run_trajectory",
]
