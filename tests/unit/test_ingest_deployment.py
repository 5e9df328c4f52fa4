"""Specification of the ingress deployment's options: a fixed replica count, or Serve autoscaling when configured.

Builds the application object only: no Ray cluster is started.
"""

from __future__ import annotations

from cluster.settings import Settings
from serve_app.app import build_app, deployment_options


def _settings(**fields: object) -> Settings:
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


def test_without_max_replicas_the_ingress_has_a_fixed_replica_count():
    assert deployment_options(_settings(ingest_replicas=3)) == {"num_replicas": 3}


def test_with_max_replicas_the_ingress_autoscales_on_ongoing_requests():
    options = deployment_options(
        _settings(ingest_min_replicas=2, ingest_max_replicas=6, ingest_target_ongoing_requests=32, ingest_replicas=3)
    )
    assert options == {"autoscaling_config": {"min_replicas": 2, "max_replicas": 6, "target_ongoing_requests": 32}}


def test_max_replicas_below_min_is_raised_to_min():
    options = deployment_options(_settings(ingest_min_replicas=4, ingest_max_replicas=2))
    assert options["autoscaling_config"]["max_replicas"] == 4


def test_serve_accepts_both_option_sets():
    # Serve validates deployment options when they are applied; an invalid set raises here.
    for fields in ({"ingest_replicas": 2}, {"ingest_min_replicas": 1, "ingest_max_replicas": 5}):
        assert build_app(_settings(**fields)) is not None
