import itertools

from dreamgym_core.testing import BagOfWordsEncoder, check_buffer
from dreamgym_plugin_exact import ExactBuffer


def test_in_memory_buffer_conforms():
    check_buffer(lambda: ExactBuffer(encoder=BagOfWordsEncoder()))


def test_on_disk_buffer_conforms(tmp_path):
    counter = itertools.count()
    check_buffer(lambda: ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path / str(next(counter))))
