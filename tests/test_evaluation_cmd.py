"""`python -m indexer evaluate` and the evaluation runner end to end: a small world indexed with the real
indexer pipeline and the real tiny encoder, searched exactly, by ANN and by ANN + rerank, in-process and over
HTTP through the real service; the Karpathy path on the fixture; the trained model's relevance bar; relevance
per query language on the committed tiny multilingual model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer import cli
from indexer.lab import languages
from indexer.lab.evaluation import analysis, runner, stores
from indexer.lab.evaluation.datasets import load_world
from indexer.models.clip import load_encoder
from search.artifact.version import open_current
from tests.service_support import tiny_checkpoint
from tests.test_evaluation_datasets import FLICKR, write_karpathy_images

GALLERY = 150
NLIST = 8
INDEX = {"factory": f"IVF{NLIST},Flat", "recall_queries": 40, "latency_queries": 10, "rerank_candidates": [50]}


@pytest.fixture(scope="module")
def world_store(tmp_path_factory: pytest.TempPathFactory):
    """(dataset, store, checkpoint): the trained tiny checkpoint when present, else a seeded random one."""
    base = tmp_path_factory.mktemp("evaluate")
    checkpoint = tiny_checkpoint(base)
    encoder = load_encoder("tiny", pretrained=str(checkpoint), device="cpu")
    dataset, store = stores.prepare_world_store(base, encoder, seed=1000, gallery=GALLERY, size=(48, 48),
                                                index=INDEX)
    return dataset, store, checkpoint, encoder


def test_modes_agree_where_they_must(world_store) -> None:
    dataset, store, _, encoder = world_store
    with open_current(store) as artifact:
        view = runner.StoreView(artifact)
        assert runner.param_name(artifact) == "nprobe"
        # every list probed and every row reranked: both approximate modes are the exact search
        full = runner.evaluate_store(dataset, view, encoder, runner.MODES, params={"nprobe": NLIST},
                                     candidates=GALLERY)
        # one list probed: the ANN alone misses neighbours; rerank over 50 candidates can only help
        narrow = runner.evaluate_store(dataset, view, encoder, runner.MODES, params={"nprobe": 1})
    t2i = full["text_to_image"]
    assert t2i["ann_vs_exact_recall@10"] == 1.0 and t2i["ann_rerank_vs_exact_recall@10"] == 1.0
    assert t2i["ann_rerank"]["R@10"] == t2i["exact"]["R@10"] and t2i["ann_rerank"]["mAP"] == t2i["exact"]["mAP"]
    n = narrow["text_to_image"]
    assert n["ann_vs_exact_recall@10"] < 1.0
    assert n["ann_rerank_vs_exact_recall@10"] >= n["ann_vs_exact_recall@10"]
    assert n["exact"] == t2i["exact"] | {"ms_per_query": n["exact"]["ms_per_query"]}
    assert full["indexed"] == GALLERY and full["not_in_index"] == 0
    assert full["text_to_image"]["exact"]["queries"] == len(dataset.queries)
    i2i = full["image_to_image"]  # images that share their caption with another image are the queries
    assert i2i["exact"]["queries"] == sum(1 for p in dataset.images if dataset.image_groups.get(p))
    assert i2i["ann_vs_exact_recall@10"] == 1.0
    seen, unseen = full["text_to_image_by_group"]["seen"], full["text_to_image_by_group"]["unseen"]
    assert seen["exact"]["queries"] + unseen["exact"]["queries"] == len(dataset.queries)
    # every query is also asked in each language; the English one is the query itself
    by_language = full["text_to_image_by_language"]
    assert tuple(by_language) == languages.LANGUAGES
    assert by_language["en"]["exact"] | {"ms_per_query": 0} == t2i["exact"] | {"ms_per_query": 0}
    assert all(s["ann_rerank_vs_exact_recall@10"] == 1.0 for s in by_language.values())


def test_sweep_recall_grows_to_exact(world_store) -> None:
    dataset, store, _, encoder = world_store
    with open_current(store) as artifact:
        view = runner.StoreView(artifact)
        queries = runner.encode_queries(encoder, [q.text for q in dataset.queries])
        rows = runner.sweep_param(view, queries, [1, 2, NLIST])
    recalls = [r["recall@10"] for r in rows]
    assert recalls == sorted(recalls) and recalls[-1] == 1.0 and recalls[0] < 1.0


def test_cli_http_mode_through_the_real_service(world_store, capsys: pytest.CaptureFixture[str]) -> None:
    dataset, store, checkpoint, _ = world_store
    code = cli.main(["evaluate", "--world", str(Path(dataset.image_root).parent), "--store", str(store),
                     "--pretrained", str(checkpoint), "--modes", "ann_rerank,http", "--max-queries", "20"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    http, inproc = report["text_to_image"]["http"], report["text_to_image"]["ann_rerank"]
    assert http["queries"] == inproc["queries"] == 20
    # the service ranks with the same vectors and exact rerank: same relevance within near-tie noise
    assert abs(http["R@10"] - inproc["R@10"]) <= 0.1
    for lang, section in report["text_to_image_by_language"].items():  # asked with lang=<code> over HTTP too
        assert section["http"]["queries"] == section["ann_rerank"]["queries"] == 20, lang
        assert abs(section["http"]["R@10"] - section["ann_rerank"]["R@10"]) <= 0.1, lang


def test_cli_karpathy_fixture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_karpathy_images(FLICKR, tmp_path / "flickr")
    checkpoint = tiny_checkpoint(tmp_path)
    code = cli.main(["evaluate", "--dataset", "karpathy", "--annotations", str(FLICKR), "--images",
                     str(tmp_path / "flickr"), "--workdir", str(tmp_path / "work"), "--pretrained", str(checkpoint),
                     "--modes", "exact"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "flickr30k" and report["images"] == 4 and report["indexed"] == 4
    assert report["text_to_image"]["exact"]["queries"] == 7
    assert report["text_to_image"]["exact"]["R@10"] == 1.0  # 4 images, 10 results: every query finds its image
    assert "image_to_image" not in report  # Karpathy captions define no image->image relevance
    assert "text_to_image_by_language" not in report  # nor translations of the queries


@pytest.mark.parametrize("argv, message", [
    (["--modes", "exact,fast"], "unknown modes"),
    (["--dataset", "karpathy"], "needs --annotations and --images"),
    (["--k", "0"], "must be >= 1"),
])
def test_cli_refuses_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_trained_tiny_model_meets_the_relevance_bar(tmp_path: Path) -> None:
    """The committed (or cached, trained once per machine) tiny model on a held-out world: R@10 >= 0.9 and at
    least 10x chance, through the indexer and the ANN + rerank path the service uses."""
    encoder = stores.tiny_encoder()
    dataset, store = stores.prepare_world_store(tmp_path, encoder, seed=1000, gallery=300, size=(96, 96))
    with open_current(store) as artifact:
        report = runner.evaluate_store(load_world(tmp_path / "world"), runner.StoreView(artifact), encoder,
                                       ("exact", "ann_rerank"))
    for mode in ("exact", "ann_rerank"):
        scores = report["text_to_image"][mode]
        assert scores["R@10"] >= 0.9, report
        assert scores["R@10"] >= 10 * scores["chance_R@10"], report


def test_cli_reports_relevance_per_query_language_on_the_multilingual_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The committed tiny multilingual model on a held-out world (English captions only, an IVF index forced):
    every language finds the photos, within 3 points of English, and ANN + rerank loses nothing against exact
    search in any language. The same rows are printed as a table on stderr."""
    code = cli.main(["evaluate", "--model", "tiny-multilingual", "--gallery", "150", "--size", "128",
                     "--workdir", str(tmp_path), "--modes", "exact,ann_rerank", "--factory", "IVF8,Flat"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    print(captured.err)
    by_language = report["text_to_image_by_language"]
    assert tuple(by_language) == languages.LANGUAGES
    queries = report["text_to_image"]["exact"]["queries"]
    for lang, section in by_language.items():
        exact, served = section["exact"], section["ann_rerank"]
        assert exact["queries"] == served["queries"] == queries, lang
        assert served["R@10"] >= 0.95 and exact["R@10"] >= 0.95, (lang, section)
        assert served["R@10"] >= 10 * served["chance_R@10"], (lang, section)
        assert section["gap_to_en"]["ann_rerank"]["R@10"] <= 0.03, (lang, section)
        assert exact["R@10"] - served["R@10"] <= 0.005, (lang, section)
        assert section["gap_to_en"]["exact"]["R@1"] == round(by_language["en"]["exact"]["R@1"] - exact["R@1"], 4)
    rows = analysis.language_rows(report)
    assert [r["lang"] for r in rows] == list(languages.LANGUAGES)
    assert rows[3]["ann_rerank R@10"] == by_language["ja"]["ann_rerank"]["R@10"]
    table = captured.err.splitlines()
    for row in rows:
        assert any(line.startswith(f"| {row['lang']} | {queries} |") for line in table), row


def test_gap_to_english_and_language_rows() -> None:
    """Pure: the gap is English's R@K minus the language's (positive = worse), per mode; the rows show each
    approximate mode's loss against exact and the served mode's gap."""
    def scores(r1: float, r10: float) -> dict[str, float]:
        return {"queries": 4, "R@1": r1, "R@5": r10, "R@10": r10}

    by_language = runner.with_gap_to({"en": {"exact": scores(0.5, 1.0), "ann_rerank": scores(0.5, 1.0)},
                                      "ja": {"exact": scores(0.75, 1.0), "ann_rerank": scores(0.5, 0.75)}},
                                     "en", (1, 5, 10))
    assert by_language["ja"]["gap_to_en"] == {"exact": {"R@1": -0.25, "R@5": 0.0, "R@10": 0.0},
                                              "ann_rerank": {"R@1": 0.0, "R@5": 0.25, "R@10": 0.25}}
    assert by_language["en"]["gap_to_en"]["exact"] == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0}
    rows = analysis.language_rows({"text_to_image_by_language": by_language})
    assert rows[1] == {"lang": "ja", "queries": 4, "exact R@1": 0.75, "exact R@5": 1.0, "exact R@10": 1.0,
                       "ann_rerank R@1": 0.5, "ann_rerank R@5": 0.75, "ann_rerank R@10": 0.75,
                       "ann_rerank - exact R@10": -0.25, "ann_rerank gap to en R@10": 0.25}
    assert runner.with_gap_to({"de": {"exact": scores(1.0, 1.0)}}, "en", (1,)) == {"de": {"exact": scores(1.0, 1.0)}}
    assert analysis.language_rows({"text_to_image": {}}) == []
