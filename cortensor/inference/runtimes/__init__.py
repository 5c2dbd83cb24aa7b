"""Loaded models, one class per task. A node holds one runtime per model it serves.

Each runtime is loaded once per process and called from the node's worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from cortensor.schemas import ChatTurn, Classification, Generation, Transcript


class Embedder(Protocol):
    """A sentence-embedding model."""

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Unit-length vectors, one row per text."""
        ...


class Classifier(Protocol):
    """A text classifier."""

    def classify(self, texts: Sequence[str], top_k: int) -> list[Classification]:
        """The best label of each text, with the `top_k` best labels and their scores."""
        ...


class Transcriber(Protocol):
    """A speech-to-text model."""

    def transcribe(self, wav: bytes, language: str | None) -> Transcript:
        """The transcript of a 16 kHz mono WAV file; `language` None means detect it."""
        ...


class Generator(Protocol):
    """A language model that continues conversations."""

    def generate(
        self, conversations: Sequence[Sequence[ChatTurn]], max_tokens: int
    ) -> list[Generation]:
        """The assistant's next turn in each conversation, at most `max_tokens` tokens."""
        ...


Runtime = Embedder | Classifier | Transcriber | Generator
