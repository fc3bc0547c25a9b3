"""The synthetic world: images and transcriptomes drawn from one hidden maturation programme.

`write_world(out)` puts it on disk (layout in docs/architecture.md); `programme` says which class
sits where on which lineage, `cells` draws the crops, `transcriptome` the counts.
"""

from wbcvae.data.synthetic.cells import draw_cell
from wbcvae.data.synthetic.programme import PROGRAMME, RNA_CLASSES, RNA_LINEAGES, sample_cells
from wbcvae.data.synthetic.transcriptome import MARKERS, make_gene_programme
from wbcvae.data.synthetic.world import write_world

__all__ = [
    "MARKERS",
    "PROGRAMME",
    "RNA_CLASSES",
    "RNA_LINEAGES",
    "draw_cell",
    "make_gene_programme",
    "sample_cells",
    "write_world",
]
