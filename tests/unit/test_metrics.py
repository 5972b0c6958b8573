"""``GET /metrics``: the Prometheus text format, read from the store per scrape, agreeing
with ``cardline status --json``; and dramatiq's own metrics from a worker process."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from db.metrics import issuance_latencies
from db.models import Certificate, OutboxMessage, utcnow
from ops.cli import main
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from ops.store import open_migrated
from producers.approvals import approve_batch
from producers.batch_import import import_batch
from producers.generate import write_users_csv
from schemas.alerts import ALERT_KINDS
from schemas.policy import Policy
from tests import factories
from tests.unit.test_api import _app, _auth


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Each sample name's (labels, value) pairs."""
    found: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return found


def _by(samples, label: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for labels, value in samples:
        totals[labels[label]] += value
    return dict(totals)


def scrape(store, tmp_path: Path, headers: dict[str, str] | None = None) -> str:
    client = _app(store, tmp_path)
    headers = headers or _auth(store, "prometheus", "monitoring")
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


def test_metrics_agree_with_cardline_status_json_after_a_small_line(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    policy = Policy()
    store = open_migrated(settings)
    csv = write_users_csv(tmp_path / "users.csv", 12, seed=3)
    report = import_batch(store, csv, policy=policy, requested_by="alice", reject_dir=tmp_path)
    approve_batch(store, report.batch_id, by="bob")
    line = EmbeddedLine(
        settings, policy, LineOptions(stations=2, time_scale=0, fault_rate=0.3, seed=5)
    )
    line.start()
    try:
        assert line.wait_drained(timeout_s=120)
    finally:
        line.stop()
    # The scraper's token first: making it is audited, and would count between the two.
    headers = _auth(store, "prometheus", "monitoring")
    status = CliRunner().invoke(
        main, ["status", "--json", "--data-dir", str(settings.data_dir)], catch_exceptions=False
    )
    assert status.exit_code == 0, status.output
    summary = json.loads(status.stdout.splitlines()[-1])
    m = _samples(scrape(store, tmp_path, headers))

    cards = _by(m["cardline_cards"], "state")
    assert cards == summary["cards"]
    finished = _by(m["cardline_attempts_finished_total"], "outcome")
    live = m["cardline_attempts_in_progress"][0][1]
    assert {**finished, **({"in_progress": live} if live else {})} == summary["attempts"]
    assert sum(finished.values()) + live == summary["blanks_used"]
    assert summary["attempts"]["spoiled"] > 0, "a 30% fault rate spoils some blanks"
    spoiled_faults = {
        labels["fault"]
        for labels, value in m["cardline_attempts_finished_total"]
        if labels["outcome"] == "spoiled" and value
    }
    assert spoiled_faults
    assert "" not in spoiled_faults  # each spoiled blank has its fault
    assert {k: v for k, v in _by(m["cardline_certificates"], "state").items() if v} == {
        k: v for k, v in summary["certificates"].items() if v
    }
    assert _by(m["cardline_queue_depth"], "queue") == summary["queues"]
    assert m["cardline_outbox_unsent"][0][1] == summary["outbox_unsent"]
    assert m["cardline_audit_events_total"][0][1] == summary["audit_events"]
    assert m["cardline_attention_open"][0][1] == len(summary["needs_attention"])
    assert m["cardline_pin_letters_pending"][0][1] == summary["letters_pending"]
    done = _by(m["cardline_station_cards_done_total"], "station")
    spoiled = _by(m["cardline_station_cards_spoiled_total"], "station")
    for st in summary["stations"]:
        assert done[st["id"]] == st["cards_done"]
        assert spoiled[st["id"]] == st["cards_spoiled"]
        status_of = {
            labels["status"]
            for labels, _ in m["cardline_station_status"]
            if labels["station"] == st["id"]
        }
        assert status_of == {st["status"]}
    assert sum(done.values()) == cards.get("active", 0)
    # Every certificate of the line was requested and issued: its latency is measured.
    assert m["cardline_certificate_issuance_sample"][0][1] > 0
    assert {
        labels["quantile"] for labels, _ in m["cardline_certificate_issuance_latency_seconds"]
    } == {"0.5", "0.9", "0.99"}
    store.dispose()


def test_every_metric_is_prefixed_cardline_and_every_alert_name_is_a_series(store, tmp_path):
    text = scrape(store, tmp_path)
    families = list(text_string_to_metric_families(text))
    assert families
    assert all(f.name.startswith("cardline_") for f in families)
    alerts = {
        s.labels["alert"]: s.value
        for f in families
        if f.name == "cardline_alerts_open"
        for s in f.samples
    }
    assert alerts == {k.name: 0 for k in ALERT_KINDS}  # zero is a value, not a missing series


def test_metrics_count_the_open_alerts_by_name_and_severity(store, tmp_path):
    with store.tx() as s:
        card = factories.credential(s, "approved")
        card.updated_at = utcnow() - dt.timedelta(hours=2)
    m = _samples(scrape(store, tmp_path))
    open_ = {(ls["alert"], ls["severity"]): v for ls, v in m["cardline_alerts_open"]}
    assert open_[("card_stuck", "warning")] == 1
    oldest = {ls["state"]: v for ls, v in m["cardline_cards_oldest_age_seconds"]}
    assert oldest["approved"] >= 7200


def test_metrics_need_a_monitoring_or_operator_token(store, tmp_path):
    client = _app(store, tmp_path)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=_auth(store, "r", "requester")).status_code == 403
    assert client.get("/metrics", headers=_auth(store, "a", "auditor")).status_code == 403
    assert client.get("/metrics", headers=_auth(store, "o", "operator")).status_code == 200
    assert client.get("/metrics", headers=_auth(store, "m", "monitoring")).status_code == 200


def test_issuance_latency_runs_from_the_first_request_to_the_certificate_stored(store):
    asked = utcnow() - dt.timedelta(minutes=5)
    with store.tx() as s:
        cert = factories.certificate(s)
        cert.attempt_id = None
        payload = {
            "type": "issue_certificate",
            "credential_id": cert.credential_id,
            "attempt_id": None,
            "update_id": None,
            "usage": "authentication",
            "csr_pem": "-",
        }
        for delay in (0, 30):  # the station asked again after 30 s: the first one counts
            s.add(
                OutboxMessage(
                    queue="pki",
                    actor="pki",
                    payload=payload,
                    created_at=asked + dt.timedelta(seconds=delay),
                )
            )
        s.add(OutboxMessage(queue="pki", actor="pki", payload={"type": "publish_crl"}))
        s.flush()
        s.query(Certificate).filter(Certificate.id == cert.id).update(
            {"created_at": asked + dt.timedelta(seconds=42)}
        )
    with store.read() as s:
        assert issuance_latencies(s) == [42.0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


WORKER = """
import sys, threading, dramatiq, urllib.request
from workers.broker import make_broker
from workers.metrics import serve_worker_metrics
broker = make_broker("memory://")
stop = serve_worker_metrics(broker, "127.0.0.1", int(sys.argv[1]))
done = threading.Event()
@dramatiq.actor(broker=broker, queue_name="prepare")
def job():
    done.set()
worker = dramatiq.Worker(broker, worker_threads=1)
worker.start()
job.send()
assert done.wait(10)
broker.join("prepare")
worker.join()
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode())
worker.stop()
import os
folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
stop()
assert not os.path.exists(folder), "the metrics files outlived the worker"
"""


def test_a_worker_process_serves_dramatiqs_own_metrics_on_its_port(tmp_path):
    port = _free_port()
    root = Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    totals = _samples(done.stdout)["dramatiq_messages_total"]
    assert ({"queue_name": "prepare", "actor_name": "job"}, 1.0) in totals
