"""``ops/monitoring/``: the Grafana dashboard and the Prometheus rules use only metrics
Cardline serves, the rules are the alerts of ``schemas.alerts`` saying what to do, and
promtool accepts them (installed by ``make test``: Debian's ``prometheus``)."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dramatiq.middleware import prometheus as dramatiq_prometheus
from prometheus_client.parser import text_string_to_metric_families

from schemas.alerts import ALERT_KINDS
from tests.unit.test_metrics import scrape

MONITORING = Path(__file__).parents[2] / "ops" / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
SCRAPE = MONITORING / "prometheus.yml"
# PromQL's own words, which look like metric names in an expression.
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "absent",
    "histogram_quantile", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "offset", "bool",
}  # fmt: skip


def _rules() -> list[dict]:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"][0]["rules"]


def _expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    return [t["expr"] for p in panels for t in p["targets"]] + [r["expr"] for r in _rules()]


def _names_in(expr: str) -> set[str]:
    """The metric names an expression reads (labels, strings and ranges left out)."""
    bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', "", expr)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    words = set(re.findall(r"\b[a-zA-Z_][a-zA-Z0-9_]*\b", bare))
    return {w for w in words - PROMQL_WORDS if not w.isdigit()}


def _served(text: str) -> set[str]:
    """Every sample name the exposition carries, and each family's name."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":  # also one without samples yet (no station)
            names.add(f"{family.name}_total")
        names |= {s.name for s in family.samples}
    return names


def test_every_metric_the_dashboard_and_the_rules_use_is_served(store, tmp_path):
    served = _served(scrape(store, tmp_path))
    used = set().union(*(_names_in(e) for e in _expressions()))
    assert {n for n in used if n.startswith("cardline_")}, "the parser found no metric"
    ours = {n for n in used if n.startswith("cardline_")}
    assert ours <= served, f"not served by GET /metrics: {sorted(ours - served)}"
    # The workers' panels read dramatiq's own middleware's metrics.
    dramatiq_source = inspect.getsource(dramatiq_prometheus)
    for name in used - ours:
        assert name.startswith("dramatiq_"), f"{name}: neither Cardline's nor dramatiq's"
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f'"{family}"' in dramatiq_source, f"{name}: dramatiq serves no such metric"


def test_the_rules_are_the_alerts_of_cardline_each_saying_what_to_do():
    rules = {r["labels"].get("cardline_alert"): r for r in _rules()}
    assert set(rules) - {None} == {k.name for k in ALERT_KINDS}
    for kind in ALERT_KINDS:
        rule = rules[kind.name]
        assert f'cardline_alerts_open{{alert="{kind.name}"}}' in rule["expr"]
        assert rule["labels"]["severity"] == kind.severity.value
        assert kind.action in rule["annotations"]["description"]
        assert rule["annotations"]["summary"]
    # One more: a Prometheus that cannot read Cardline would otherwise stay silent.
    assert "absent(" in rules[None]["expr"]


def test_the_dashboard_is_grafana_json_with_a_panel_per_area():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for area in ("alerts", "cards by state", "station", "spoil", "queue", "outbox",
                 "certificate issuance", "transitions", "dramatiq"):  # fmt: skip
        assert area in titles, area
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_example_scrape_config_sends_a_bearer_token_and_loads_the_rules():
    config = yaml.safe_load(SCRAPE.read_text(encoding="utf-8"))
    assert config["rule_files"] == [RULES.name]
    api = next(job for job in config["scrape_configs"] if job["job_name"] == "cardline")
    assert api["metrics_path"] == "/metrics"
    assert api["authorization"]["type"] == "Bearer"
    assert "credentials_file" in api["authorization"]


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool is missing: ops/system-deps.sh test installs prometheus")
        pytest.skip("promtool not installed (Debian: prometheus; make test installs it)")
    return found


def test_promtool_accepts_the_rules_and_the_scrape_config(tmp_path):
    promtool = _promtool()
    rules = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in rules.stdout + rules.stderr
    # The scrape config names a token file: check it with one in place.
    config = SCRAPE.read_text(encoding="utf-8").replace(
        "/etc/prometheus/cardline.token", str(tmp_path / "cardline.token")
    )
    (tmp_path / "cardline.token").write_text("cl_example\n")
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "prometheus.yml").write_text(config)
    checked = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
