"""Names no principal may be issued."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortensor.errors import BadInput
from cortensor.schemas import ANONYMOUS
from cortensor.settings import Settings
from cortensor.tools.credentials import issue


def test_no_client_may_be_called_anonymous(tmp_path: Path) -> None:
    """Probes' verdicts and those of jobs recorded before owners go to the anonymous
    owner's subjects: a client of that name would read them. Refused before any server
    is touched."""
    out = tmp_path / "anonymous.json"
    with pytest.raises(BadInput, match="reserved"):
        issue(Settings(credentials=None), "client", ANONYMOUS, out)
    assert not out.exists()
