import itertools

from dreamgym_core.testing import BagOfWordsEncoder, check_buffer
from dreamgym_plugin_annoy import AnnoyBuffer, AnnoyConfig

# Small segments and min_rows so the kit's 24 records actually go through an annoy index.
SMALL = AnnoyConfig(min_rows=4, segment_records=8, flush_every=4)


def test_in_memory_buffer_conforms():
    check_buffer(lambda: AnnoyBuffer(SMALL, encoder=BagOfWordsEncoder()))


def test_on_disk_buffer_conforms(tmp_path):
    counter = itertools.count()
    check_buffer(lambda: AnnoyBuffer(SMALL, encoder=BagOfWordsEncoder(), path=tmp_path / str(next(counter))))
