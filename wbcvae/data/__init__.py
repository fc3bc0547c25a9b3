"""Data sources in, tensors out: image manifests and crop datasets, RNA readers, the synthetic world.

Submodules are imported where used (`from wbcvae.data.images import read_manifest`) so that
importing this package stays cheap.
"""
