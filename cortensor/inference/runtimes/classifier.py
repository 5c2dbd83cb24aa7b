"""Text classification with a linear head over sentence embeddings (the intent classifier).

The head is scikit-learn's multinomial logistic regression exported once to numpy
(`cortensor models prepare`): probabilities are softmax(E @ coef.T + intercept), which is
what its predict_proba computes, with no scikit-learn at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cortensor.errors import ModelsNotPrepared
from cortensor.inference.manifest import ModelVariant
from cortensor.inference.runtimes import Embedder
from cortensor.schemas import Classification, LabelScore

SCORE_DECIMALS = 6
"""Scores are rounded so that redundant nodes report the same digits for the same answer."""

Matrix = npt.NDArray[np.float64]


class ClassifierRuntime:
    """A linear head loaded from `head_file`, run over the vectors of `embedder`.

    The head's weights stay in float64, as exported, so that its probabilities match the
    original model's predict_proba on the same embeddings to rounding.
    """

    def __init__(self, embedder: Embedder, head_file: Path) -> None:
        """Load the head (coef, intercept, labels) from `head_file`, an .npz archive."""
        if not head_file.is_file():
            raise ModelsNotPrepared(f"{head_file} is missing; run `cortensor models prepare`.")
        with np.load(head_file, allow_pickle=False) as head:
            coef = np.asarray(head["coef"], dtype=np.float64)
            intercept = np.asarray(head["intercept"], dtype=np.float64)
            labels = [str(label) for label in head["labels"]]
        if coef.ndim != 2 or coef.shape[0] != len(labels) or intercept.shape != (len(labels),):
            raise ModelsNotPrepared(
                f"{head_file} is inconsistent (coef {coef.shape}, intercept {intercept.shape},"
                f" {len(labels)} labels); run `cortensor models prepare --force`."
            )
        self._embedder = embedder
        self._coef, self._intercept = coef, intercept
        self.labels: tuple[str, ...] = tuple(labels)
        """Every label the head can give, in the head's class order."""
        self.batch_independent: bool = bool(getattr(embedder, "batch_independent", False))
        """Whether texts of several requests may share a call: the head reads each
        text's vector alone, so this is its embedder's answer."""

    @classmethod
    def from_manifest(
        cls, models_dir: Path, manifest_variant: ModelVariant, embedder: Embedder
    ) -> ClassifierRuntime:
        """The runtime for a head listed in the manifest, over an already loaded `embedder`."""
        return cls(embedder, models_dir / manifest_variant.entry)

    def probabilities(self, texts: Sequence[str]) -> Matrix:
        """Unrounded class probabilities, shape (len(texts), len(labels)), in label order."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        vectors = np.asarray(self._embedder.embed(texts), dtype=np.float64)
        logits = vectors @ self._coef.T + self._intercept
        # Subtracting each row's maximum keeps exp() finite; softmax is unchanged by it.
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities: Matrix = exp / exp.sum(axis=1, keepdims=True)
        return probabilities

    def classify(self, texts: Sequence[str], top_k: int) -> list[Classification]:
        """The best label of each text and the `top_k` best with their probabilities.

        Labels are ordered by rounded score, highest first, and by label among equal
        scores, so that two nodes with the same scores give the same order.
        """
        k = max(1, min(top_k, len(self.labels)))
        results: list[Classification] = []
        for row in self.probabilities(texts):
            scores = [round(float(p), SCORE_DECIMALS) for p in row]
            order = sorted(range(len(scores)), key=lambda i: (-scores[i], self.labels[i]))
            top = [LabelScore(label=self.labels[i], score=scores[i]) for i in order[:k]]
            results.append(Classification(label=top[0].label, score=top[0].score, top=top))
        return results
