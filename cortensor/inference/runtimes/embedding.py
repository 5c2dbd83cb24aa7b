"""Sentence embeddings with ONNX Runtime: tokenize, run, mean-pool, L2-normalize."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from cortensor.errors import ModelsNotPrepared
from cortensor.inference.manifest import ModelVariant

MAX_TOKENS = 256
"""all-MiniLM-L6-v2 was trained on at most 256 word pieces; sentence-transformers cuts there."""

Embeddings = npt.NDArray[np.float32]
Device = Literal["cpu", "cuda"]
_PROVIDERS: dict[Device, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    # Operators the CUDA provider lacks fall back to the CPU within the same session.
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


class EmbeddingRuntime:
    """One ONNX embedding model, loaded once per process and reused for every call.

    `threads` is ONNX Runtime's intra-op thread count: keep processes x threads within the
    cores, or the processes slow each other down. `device` "cuda" runs the graph on the GPU
    (the fp16 variant of the cuda-fp16 class); it needs onnxruntime-gpu.
    """

    def __init__(
        self,
        model_dir: Path,
        onnx_file: Path,
        *,
        threads: int = 1,
        per_text: bool = False,
        device: Device = "cpu",
    ) -> None:
        """Load `onnx_file` (relative paths are taken from `model_dir`) and its tokenizer.

        `per_text` runs each text alone. Dynamically quantized graphs need it: they scale
        activations over the whole batch, so a text's vector would depend on its batch
        mates (cosine down to ~0.95), and redundant nodes must agree whatever they batch.
        The fp32 graph and the per-token int8 graphs (tools.quantize) give each text the
        same vector alone and in any batch, bit for bit on the CPU.
        """
        self._per_text = per_text
        self.batch_independent: bool = device == "cpu" and not per_text
        """Whether one call on many texts gives each the vector it gets alone, so that
        texts of several requests may share a call (a per-text runtime gains nothing
        from it; the GPU's kernels may change with the batch's shape)."""
        onnx_path = model_dir / onnx_file
        tokenizer_path = model_dir / "tokenizer.json"
        for path in (onnx_path, tokenizer_path):
            if not path.is_file():
                raise ModelsNotPrepared(f"{path} is missing; run `cortensor models prepare`.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=_PROVIDERS[device]
        )
        self._input_names = frozenset(str(i.name) for i in self._session.get_inputs())
        output = self._session.get_outputs()[0]
        self._output_name = str(output.name)
        last = output.shape[-1]
        self.dimension: int = last if isinstance(last, int) else 0
        """Length of each vector (384 for all-MiniLM-L6-v2); 0 if the graph leaves it open."""

        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.enable_truncation(max_length=MAX_TOKENS)
        # The exported tokenizer pads to a fixed 128; pad each batch to its longest text instead.
        padding = self._tokenizer.padding or {}
        self._tokenizer.enable_padding(
            pad_id=int(padding.get("pad_id", 0)),
            pad_type_id=int(padding.get("pad_type_id", 0)),
            pad_token=str(padding.get("pad_token", "[PAD]")),
        )

    @classmethod
    def from_manifest(
        cls,
        models_dir: Path,
        manifest_variant: ModelVariant,
        threads: int = 1,
        device: Device = "cpu",
    ) -> EmbeddingRuntime:
        """The runtime for a variant listed in the manifest of `models_dir`."""
        directory = PurePosixPath(manifest_variant.directory)
        onnx_file = PurePosixPath(manifest_variant.entry).relative_to(directory)
        return cls(
            models_dir / directory,
            Path(onnx_file),
            threads=threads,
            per_text="dynamic" in manifest_variant.quantization,
            device=device,
        )

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """Unit-length float32 embeddings of `texts`, shape (len(texts), dimension)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._per_text and len(texts) > 1:
            return np.vstack([self._run([text]) for text in texts])
        return self._run(texts)

    def _run(self, texts: Sequence[str]) -> Embeddings:
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        # Exports differ in which inputs they declare (DistilBERT has no token_type_ids).
        feed = {name: value for name, value in feeds.items() if name in self._input_names}
        (tokens,) = self._session.run([self._output_name], feed)
        return _mean_pool_normalize(np.asarray(tokens, dtype=np.float32), mask)


def _mean_pool_normalize(tokens: Embeddings, mask: npt.NDArray[np.int64]) -> Embeddings:
    # Padding tokens get hidden states too; the mask keeps them out of the mean.
    weights = mask[:, :, np.newaxis].astype(np.float32)
    summed = (tokens * weights).sum(axis=1)
    pooled = summed / np.clip(weights.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    normalized: Embeddings = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
    return normalized
