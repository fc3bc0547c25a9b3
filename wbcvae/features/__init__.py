"""The image VAE's inputs: Mask R-CNN RoIAlign features, masks and targets per crop.

- `extract`: batched extraction over a manifest (`extract_features`, `FeatureExtractor`).
- `pose`: `canonical_pose`, each crop's cell centred and its nucleus turned to one orientation.
- `store`: the resumable, memory-mapped `FeatureStore`.
- `datamodule`: `FeatureDataModule`, the feature batches of docs/architecture.md.

Submodules are imported where used, so importing this package stays cheap.
"""
