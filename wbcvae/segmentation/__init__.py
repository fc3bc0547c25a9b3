"""Segmenting the white cell in each crop.

- `classical`: stain-based pseudo-masks (scikit-image), for sources without masks.
- `maskrcnn`: torchvision Mask R-CNN built without downloads, and its LightningModule.
- `targets`: boxes and masks for training, from true masks or pseudo-masks; the DataModule.
- `train`: one YAML config → a trained checkpoint (`wbcvae segment train`).
- `metrics`, `overlay`: IoU against true masks; outlines drawn over crops for people and loggers.

Submodules are imported where used, so importing this package stays cheap.
"""
