"""Dataset folder layouts -> WebDataset shards (``gendet import genimage|ufd|folder``).

Each importer plans the samples from a sorted listing of ROOT (failing on a wrong layout before
anything is written), then writes them with ``gendet.data.importers.common.write_groups``: original bytes,
type checked by magic bytes, deterministic shard names ``<subset>[-<split>]-NNNNNN.tar`` and contents.
"""

from gendet.data.importers.folder import import_folder
from gendet.data.importers.genimage import import_genimage
from gendet.data.importers.ufd import import_ufd

__all__ = ["import_folder", "import_genimage", "import_ufd"]
