"""The served FAISS index is memory-mapped (search.artifact.ann.read_index): the same answers as a heap read for
every index family the selection (indexer.index.index_select.choose_index) picks, Flat, HNSW, IVF-PQ and
OPQ+IVF-PQ, and for IVF-Flat (a forced `factory`); the file is mapped, not copied; damaged files are refused."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from search.artifact import ann
from search.artifact.version import ArtifactError, open_shard, open_version
from tests.artifact_support import clustered, publish, small_config

D = 64
# the shapes choose_index writes (`HNSW{m}`, `IVF{nlist},PQ{m}`, `OPQ{m}_{4m},IVF{nlist},PQ{m}`) at a size a
# test can train, plus IVF-Flat
FACTORIES = ["Flat", "HNSW32", "IVF64,Flat", "IVF64,PQ8", "OPQ8_32,IVF64,PQ8"]


@pytest.fixture(scope="module", params=FACTORIES)
def version(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mmap")
    return publish(root / "store", clustered(3000, D, seed=5), config=small_config(factory=request.param)).path


def _mapped_files() -> set[str]:
    with open("/proc/self/maps") as fh:
        return {line.split(maxsplit=5)[5].strip() for line in fh if len(line.split(maxsplit=5)) == 6}


def test_same_ids_and_scores_as_the_heap_read(version: Path) -> None:
    queries = clustered(40, D, seed=9)
    with open_version(version) as art:
        heap = faiss.read_index(str(version / "index.faiss"))
        for k in (1, 10, 100):
            mapped_s, mapped_i = ann.ann_search(art.index, queries, k, art.search_params)
            heap_s, heap_i = ann.ann_search(heap, queries, k, art.search_params)
            assert np.array_equal(mapped_i, heap_i)
            assert np.array_equal(mapped_s.view(np.int32), heap_s.view(np.int32))  # bit for bit
        assert (mapped_i[:, 0] >= 0).all()  # the comparison is over real hits
        whole = art.search(queries, 10)
        assert np.array_equal(whole.ids, open_shard(version, 0).search(queries, 10).ids)


def test_the_index_file_is_mapped_not_copied(version: Path) -> None:
    path = str((version / "index.faiss").resolve())
    assert path not in _mapped_files()
    with open_version(version):
        assert path in _mapped_files()


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 0.999])
def test_a_truncated_index_is_refused(version: Path, tmp_path: Path, keep: float) -> None:
    data = (version / "index.faiss").read_bytes()
    damaged = tmp_path / "index.faiss"
    damaged.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(RuntimeError):
        ann.read_index(damaged)


def test_garbage_through_open_is_an_artifact_error(version: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import stat

    from search.artifact import checksums

    copy = tmp_path / "v"
    shutil.copytree(version, copy)
    for f in copy.iterdir():
        f.chmod(stat.S_IRUSR | stat.S_IWUSR)
    size = (copy / "index.faiss").stat().st_size
    (copy / "index.faiss").write_bytes(b"\x07" * size)  # same size: only FAISS itself can refuse it
    monkeypatch.setattr(checksums, "ALWAYS_HASHED_BYTES", 0)
    with pytest.raises(ArtifactError, match="FAISS cannot read"):
        open_version(copy)
