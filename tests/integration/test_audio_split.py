"""A real 900 s recording (the longest Settings.max_audio_s lets in) is cut into parts
that honest nodes finish within their deadlines at Whisper's recorded speed
(docs/design.md, Overload; tests/unit/test_audio_deadlines.py checks the same rule on
every length and fleet)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from cortensor.audio import SAMPLE_RATE, cut, encode_wav, load_audio
from cortensor.protocol.planning import Backlog, parallel
from cortensor.settings import Settings
from cortensor.tools.speech import SENTENCES, long_speech
from tests.unit.test_audio_deadlines import Span, fleet, late, route, split

MAX_AUDIO_S = Settings().max_audio_s


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Eighteen spoken sentences (about 70 s) over and over, to just under 900 s."""
    folder = tmp_path_factory.mktemp("long")
    speech = load_audio(
        long_speech(SENTENCES[:18], folder / "speech.wav", pause_s=0.6).read_bytes(),
        max_seconds=MAX_AUDIO_S,
    )
    pause = np.zeros(int(0.6 * SAMPLE_RATE), dtype=speech.dtype)
    one = np.concatenate([speech, pause])
    whole = np.resize(one, int((MAX_AUDIO_S - 1.0) * SAMPLE_RATE))
    return encode_wav(whole)


def test_a_900_s_recording_is_cut_so_that_every_part_is_done_in_time(
    recording: bytes,
) -> None:
    nodes, redundancy = 3, 3  # every node runs every part: the most any one node holds
    s = Settings()
    chunks = cut(
        recording,
        chunk_s=s.chunk_s,
        min_chunk_s=s.chunk_min_s,
        max_seconds=s.max_audio_s,
        parallel=parallel(nodes, redundancy),
    )
    lengths = [c.end_s - c.start_s for c in chunks]
    assert len(chunks) >= 30
    assert max(lengths) <= 45.0
    assert sum(lengths) == pytest.approx(MAX_AUDIO_S - 1.0, abs=0.01)

    # Whisper's speed is a benchmark's figure, not a test's (it moves with the load):
    # the parts are checked at the speed LIMITS.md records, as in the unit test.
    now = datetime.now(UTC)
    units = split([Span(c.start_s, c.end_s) for c in chunks], redundancy, now)
    plans = route(units, fleet(nodes), Backlog(), now)
    assert late(plans, now) == []
