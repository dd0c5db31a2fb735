"""Merging the workers' metrics into one exposition (the text format, checked with prometheus-client's parser)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from xiaozhi_trio.pipeline.ops.metrics import Metrics
from xiaozhi_trio.pipeline.ops.worker_metrics import WorkerMetrics, add_label, forget_worker, merge_expositions


def test_a_label_goes_first_in_every_shape_of_sample() -> None:
    assert add_label("x_total 3", "worker", "1") == 'x_total{worker="1"} 3'
    assert add_label('x_total{a="b"} 3', "worker", "1") == 'x_total{worker="1",a="b"} 3'
    assert add_label("x_total{} 3", "worker", "0") == 'x_total{worker="0"} 3'
    assert add_label('h_bucket{le="+Inf"} 2 1700000000', "worker", "2") == 'h_bucket{worker="2",le="+Inf"} 2 1700000000'


def exposition(metrics: Metrics) -> str:
    return metrics.render()[0].decode()  # the default: the text format 0.0.4


def samples(text: str, name: str) -> list:
    """Every sample called ``name``, whichever family the parser files it under."""
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def test_merged_workers_parse_and_keep_every_sample() -> None:
    first, second = Metrics(), Metrics()
    first.http_request("ota", 200, 0.003)
    second.http_request("ota", 200, 0.004)
    second.http_request("ota", 500, 0.2)
    merged = merge_expositions({"0": exposition(first), "1": exposition(second)})
    requests = samples(merged, "xiaozhi_http_requests_total")
    by_worker = {(s.labels["worker"], s.labels["status"]): s.value for s in requests}
    assert by_worker == {("0", "200"): 1.0, ("1", "200"): 1.0, ("1", "500"): 1.0}
    # Each family is announced once, with all its samples after it.
    assert merged.count("# TYPE xiaozhi_http_requests_total ") == 1


@given(st.lists(st.sampled_from([200, 404, 500]), max_size=20), st.lists(st.sampled_from([200, 404, 500]), max_size=20))
def test_merging_adds_up_to_the_sum_of_the_workers(first_statuses: list[int], second_statuses: list[int]) -> None:
    workers = {"0": Metrics(), "1": Metrics()}
    for status in first_statuses:
        workers["0"].http_request("ota", status, 0.01)
    for status in second_statuses:
        workers["1"].http_request("ota", status, 0.01)
    merged = merge_expositions({k: exposition(v) for k, v in workers.items()})
    total = sum(s.value for s in samples(merged, "xiaozhi_http_requests_total"))
    assert total == len(first_statuses) + len(second_statuses)


def test_a_worker_scrape_includes_its_siblings_until_one_is_forgotten(tmp_path: Path) -> None:
    metrics = [Metrics(), Metrics()]
    workers = [WorkerMetrics.of(metrics[i], tmp_path, i) for i in range(2)]
    metrics[1].http_request("ota", 200, 0.01)
    workers[1].publish()
    metrics[0].http_request("ota", 200, 0.01)  # fresh, not yet published: the scrape still sees it
    seen = {s.labels["worker"] for s in samples(workers[0].scrape(), "xiaozhi_http_requests_total")}
    assert seen == {"0", "1"}
    forget_worker(tmp_path, 1)
    seen = {s.labels["worker"] for f in text_string_to_metric_families(workers[0].scrape()) for s in f.samples}
    assert seen == {"0"}
