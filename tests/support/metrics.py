"""A replica's Prometheus metrics (README, "Watching a stack"), scraped and read."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import call

# Metric name -> {labels as sorted (name, value) pairs: value}.
Scrape = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(port: int) -> Scrape:
    reply = call(port, "GET", "/metrics")
    assert reply.status == 200, reply
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Scrape = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = (
                sample.value
            )
    return samples


def value(samples: Scrape, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]
