"""The streams that carry user content (results, verdicts) keep a message only for the
retention period that `cortensor brokers setup` reads from the settings."""

from __future__ import annotations

import pytest

from cortensor.adapters import jetstream
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.adapters.topology import Topology
from tests.conftest import make_settings

pytestmark = pytest.mark.nats


async def test_results_and_verdicts_are_kept_for_the_retention_period() -> None:
    settings = make_settings(retention_h=2.0)
    topology = Topology(settings.namespace)
    content = {s.name for s in topology.streams if s.holds_content}
    assert {topology.results_stream, topology.verdicts_stream} <= content
    await setup_brokers(settings)
    nc = await jetstream.connect_as(settings, name="test-stream-retention")
    try:
        js = nc.jetstream()
        for spec in topology.streams:
            info = await js.stream_info(spec.name)
            assert info.config.max_age == (7200 if spec.holds_content else spec.max_age_s)

        # A new retention period applies to the streams already there.
        await setup_brokers(make_settings(namespace=settings.namespace, retention_h=0.5))

        for name in content:
            assert (await js.stream_info(name)).config.max_age == 1800
    finally:
        await nc.close()
        await teardown_brokers(settings)
