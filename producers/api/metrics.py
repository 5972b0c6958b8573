"""The Prometheus view of the store: a collector that reads it on every scrape.

``StoreCollector.collect`` makes one read transaction (``db.metrics.read``) and turns it
into metric families; nothing is counted in process memory, so every API process serves
the same numbers, and the same as ``cardline status --json``. Every name starts with
``cardline_``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from db import metrics
from db.engine import Store
from schemas.alerts import ALERT_KINDS, AlertConfig


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"cardline_{name}", doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(f"cardline_{name}", doc, labels=labels)


def families(m: metrics.LineMetrics) -> list[Metric]:
    """The metric families of one reading."""
    cards = _gauge("cards", "Cards and temporary cards by state and kind.", ["state", "kind"])
    for (state, kind), n in sorted(m.cards.items()):
        cards.add_metric([state, kind], n)
    oldest = _gauge(
        "cards_oldest_age_seconds",
        "Age of the last change of the oldest card in each watched state (0: none).",
        ["state"],
    )
    for state, age in sorted(m.card_oldest_age_s.items()):
        oldest.add_metric([state], age)
    finished = _counter(
        "attempts_finished",
        "Production attempts (blanks) finished, by outcome and fault kind.",
        ["outcome", "fault"],
    )
    in_progress = _gauge("attempts_in_progress", "Blanks in a station right now.")
    live = 0
    for (state, fault), n in sorted(m.attempts.items()):
        if state == "in_progress":
            live += n
        else:
            finished.add_metric([state, fault], n)
    in_progress.add_metric([], live)
    certs = _gauge("certificates", "Certificates by state.", ["state"])
    for state, n in sorted(m.certificates.items()):
        certs.add_metric([state], n)
    tokens = _gauge("soft_tokens", "Soft tokens by state.", ["state"])
    for state, n in sorted(m.soft_tokens.items()):
        tokens.add_metric([state], n)
    return [
        cards,
        oldest,
        finished,
        in_progress,
        certs,
        tokens,
        *_stations(m),
        *_queues(m),
        *_issuance(m),
        *_line(m),
        *_alerts(m),
    ]


def _stations(m: metrics.LineMetrics) -> list[Metric]:
    status = _gauge(
        "station_status", "1 for each station's current status.", ["station", "line", "status"]
    )
    done = _counter("station_cards_done", "Cards a station finished.", ["station", "line"])
    spoiled = _counter("station_cards_spoiled", "Blanks a station spoiled.", ["station", "line"])
    age = _gauge(
        "station_heartbeat_age_seconds", "Seconds since a station's last heartbeat.", ["station"]
    )
    for st in m.stations:
        status.add_metric([st.id, st.line, st.status], 1)
        done.add_metric([st.id, st.line], st.cards_done)
        spoiled.add_metric([st.id, st.line], st.cards_spoiled)
        age.add_metric([st.id], st.heartbeat_age_s)
    return [status, done, spoiled, age]


def _queues(m: metrics.LineMetrics) -> list[Metric]:
    depth = _gauge(
        "queue_depth", "Work waiting per queue, from the store (as cardline status).", ["queue"]
    )
    age = _gauge(
        "queue_oldest_age_seconds", "Seconds the oldest item of a queue has waited.", ["queue"]
    )
    for queue, n in sorted(m.queues.items()):
        depth.add_metric([queue], n)
        age.add_metric([queue], m.queue_oldest_age_s.get(queue, 0.0))
    unsent = _gauge("outbox_unsent", "Messages written to the outbox and not yet published.")
    unsent.add_metric([], m.outbox_unsent)
    oldest = _gauge("outbox_oldest_unsent_age_seconds", "Age of the oldest unsent message.")
    oldest.add_metric([], m.outbox_oldest_age_s)
    return [depth, age, unsent, oldest]


def _issuance(m: metrics.LineMetrics) -> list[Metric]:
    latency = _gauge(
        "certificate_issuance_latency_seconds",
        f"Certificate request to certificate stored, over the newest "
        f"{metrics.LATENCY_SAMPLE} requests.",
        ["quantile"],
    )
    for q, seconds in m.issuance_quantiles().items():
        latency.add_metric([str(q)], seconds)
    sample = _gauge("certificate_issuance_sample", "Certificates the latency quantiles are over.")
    sample.add_metric([], len(m.issuance_s))
    return [latency, sample]


def _line(m: metrics.LineMetrics) -> list[Metric]:
    events = _counter(
        "audit_events", "Audited events (every state change is one): rate() is the transitions."
    )
    events.add_metric([], m.audit_events)
    attention = _gauge("attention_open", "Work waiting for a person (cardline attention list).")
    attention.add_metric([], m.attention_open)
    letters = _gauge("pin_letters_pending", "Produced cards without a PIN letter yet.")
    letters.add_metric([], m.letters_pending)
    tokens = _gauge("soft_tokens_pending", "Soft tokens approved, not yet issued or delivered.")
    tokens.add_metric([], m.softtokens_pending)
    return [events, attention, letters, tokens]


def _alerts(m: metrics.LineMetrics) -> list[Metric]:
    alerts = _gauge(
        "alerts_open", "Open alerts by name and severity (cardline alerts).", ["alert", "severity"]
    )
    counts = {k.name: 0 for k in ALERT_KINDS}
    for alert in m.alerts:
        counts[alert.name] += 1
    for kind in ALERT_KINDS:
        alerts.add_metric([kind.name, kind.severity.value], counts[kind.name])
    return [alerts]


class StoreCollector(Collector):
    """Reads the store on every scrape."""

    def __init__(self, store: Store, config: AlertConfig) -> None:
        self.store = store
        self.config = config

    def collect(self) -> Iterator[Metric]:
        with self.store.read() as s:
            reading = metrics.read(s, self.config)
        yield from families(reading)


def registry_for(store: Store, config: AlertConfig) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one) holding the collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, config))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
