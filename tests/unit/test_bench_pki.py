"""The PKI bench runs end to end with a tiny count and reports well-formed rows.

Only the structure is checked: speed is what the bench measures, never what a test asserts.
"""

from __future__ import annotations

import json

import pytest

from ops import bench_pki
from ops.bench_pki import PkiBench


def _check(bench: PkiBench, configurations: list[tuple[str, str]], count: int) -> None:
    assert [(r.ca_algorithm, r.key_store) for r in bench.rows] == configurations
    for row in bench.rows:
        assert row.count == count
        assert row.certificates_stored == count
        assert row.worker_elapsed_s > 0
        assert row.worker_certs_per_s > 0
        assert row.cpu_ms_per_cert > 0
        assert row.floor_signs_per_s > 0
        assert row.worker_over_floor > 0


def test_file_key_bench_issues_and_stores_every_certificate(capsys):
    configurations = [("ec-p256", "file"), ("rsa-2048", "file")]
    bench = bench_pki.run(count=5, configurations=configurations)
    assert bench.skipped == []
    _check(bench, configurations, 5)

    bench_pki.emit(bench)
    lines = capsys.readouterr().out.strip().splitlines()
    assert "worker/floor" in "\n".join(lines[:-1])
    last = json.loads(lines[-1])  # the table, then exactly one JSON line
    assert [r["certificates_stored"] for r in last["bench_pki"]] == [5, 5]


@pytest.mark.hardware
def test_pkcs11_key_bench_signs_on_a_private_softhsm_token():
    reason = bench_pki.SoftHsm.available()
    if reason:
        pytest.skip(reason)
    configurations = [("ec-p256", "pkcs11"), ("rsa-2048", "pkcs11")]
    bench = bench_pki.run(count=5, configurations=configurations)
    assert bench.skipped == []
    _check(bench, configurations, 5)


def test_pkcs11_rows_are_skipped_with_a_note_without_softhsm(monkeypatch):
    monkeypatch.setattr(bench_pki, "MODULE", "/nonexistent/libsofthsm2.so")
    bench = bench_pki.run(count=2, configurations=[("ec-p256", "file"), ("ec-p256", "pkcs11")])
    assert [(r.ca_algorithm, r.key_store) for r in bench.rows] == [("ec-p256", "file")]
    assert len(bench.skipped) == 1
    assert "ec-p256/pkcs11" in bench.skipped[0]
