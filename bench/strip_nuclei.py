"""Does the decoded path's nucleus condense and segment? The nucleus the stain segmenter finds in each frame of a
decoded strip: its solidity (area over convex hull: a round blob near 1, a band or lobes well under it; a ring
counts as a blob) and its number of pieces, frame by frame, for one or more alignment runs side by side.

    python bench/strip_nuclei.py RUN_A RUN_B [--preset granulopoiesis] [--frames 10]

RUN is an alignment run folder (`…/alignment_pbc_vangalen/version_0`: checkpoints/last.ckpt and the preset's
trajectories/PRESET/path.csv, the decoded mean path). The frames are the strip's own (`strip_frame_steps`).
For a yardstick, `bench/vae_quality.py` prints the solidity of real segmented neutrophils' nuclei (about 0.8).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from skimage.measure import label

from wbcvae.alignment.module import load_alignment
from wbcvae.segmentation.classical import StainSegmenter
from wbcvae.trajectory.decode import strip_frame_steps
from vae_quality import nuclei, nucleus_solidity, on_slide  # bench/ is on the path when run as a script


def frame_nuclei(run: Path, preset: str, frames: int) -> pd.DataFrame:
    """Per strip frame: pseudotime, nucleus solidity and pieces of the decoded cell (inside its predicted mask)."""
    path = pd.read_csv(run / "trajectories" / preset / "path.csv")
    steps = strip_frame_steps(len(path), frames)
    z = torch.tensor(path.filter(regex=r"^z\d+$").to_numpy()[steps], dtype=torch.float32)
    vae = load_alignment(run / "checkpoints" / "last.ckpt").image_plan.vae.eval()
    with torch.no_grad():
        _, images, mask_logits = vae.decode(z)
    found = nuclei(on_slide(images.clamp(0, 1).numpy(), (mask_logits.sigmoid() > 0.5).float().numpy()), StainSegmenter())
    return pd.DataFrame({
        "t": path["pseudotime"].to_numpy()[steps],
        "solidity": nucleus_solidity(found),
        "pieces": [int(label(n).max()) for n in found],
    })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="alignment run folders")
    parser.add_argument("--preset", default="granulopoiesis")
    parser.add_argument("--frames", type=int, default=10, help="strip frames (the strip's default: 10)")
    args = parser.parse_args()
    for run in args.runs:
        table = frame_nuclei(run, args.preset, args.frames)
        cells = " | ".join(f"{s:.2f} ({p})" for s, p in zip(table["solidity"], table["pieces"]))
        print(f"{run}\n  t:                 {' | '.join(f'{t:.2f}' for t in table['t'])}")
        print(f"  solidity (pieces): {cells}")


if __name__ == "__main__":
    main()
