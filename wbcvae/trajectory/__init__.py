"""Differentiation paths: a GP from pseudotime to the joint latent, decoded into images and genes,
the genes clustered by the shape of their kinetics (k-Shape).

Import from the modules (`gp`, `decode`, `kinetics`, `presets`, `recovery`, `run`): the package itself
imports nothing, so `presets` stays light enough for the CLI to list the presets without torch.
"""
