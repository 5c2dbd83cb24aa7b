"""Text generation with ONNX Runtime: a decoder with a KV cache, decoded greedily.

The graph (tools.prepare_llm) takes input_ids, attention_mask, position_ids and
past_key_values.<layer>.key/value, and returns logits and present.<layer>.key/value. The
prompt runs once; each new token then runs alone over the cache of everything before it.

Each conversation runs alone: batched, conversations of different lengths would be padded
and masked, and a graph's numbers may move with the batch's shape, so one conversation's
tokens could depend on the others'. Alone, the same conversation gives the same tokens on
every call, in any process with the same graph.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from cortensor.errors import BadInput, ModelsNotPrepared
from cortensor.inference.manifest import ModelVariant
from cortensor.inference.runtimes.embedding import Device
from cortensor.schemas import ChatTurn, Generation

END_OF_TURN = "<|im_end|>"
"""The token that ends an assistant's turn in the ChatML template of SmolLM2."""

_PAST = "past_key_values."
_PRESENT = "present."
_PROVIDERS: dict[Device, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}
_PREPARE_HINT = "run `cortensor models prepare`"


class GeneratorRuntime:
    """One ONNX causal language model, loaded once per process and reused for every call.

    `threads` is ONNX Runtime's intra-op thread count: keep processes x threads within the
    cores.
    """

    def __init__(
        self, model_dir: Path, onnx_file: Path, *, threads: int = 1, device: Device = "cpu"
    ) -> None:
        """Load `onnx_file` (relative paths are taken from `model_dir`), the tokenizer, the
        chat template and the model's config from `model_dir`."""
        onnx_path = model_dir / onnx_file
        needed = ("tokenizer.json", "config.json", "chat_template.jinja")
        for path in (onnx_path, *(model_dir / name for name in needed)):
            if not path.is_file():
                raise ModelsNotPrepared(f"{path} is missing; {_PREPARE_HINT}.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=_PROVIDERS[device]
        )
        inputs = {str(i.name): i for i in self._session.get_inputs()}
        self._has_positions = "position_ids" in inputs
        self._past_names = [name for name in inputs if name.startswith(_PAST)]
        self._present_names = [_PRESENT + name.removeprefix(_PAST) for name in self._past_names]
        self._empty_past = {name: _empty_cache(inputs[name].shape) for name in self._past_names}

        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = environment.from_string(template)

        config: dict[str, Any] = json.loads((model_dir / "config.json").read_text("utf-8"))
        self.context: int = int(config["max_position_embeddings"])
        """The most tokens a prompt and its answer may hold together."""
        stops = {self._tokenizer.token_to_id(END_OF_TURN), config.get("eos_token_id")}
        self._stops = frozenset(int(token) for token in stops if token is not None)

    @classmethod
    def from_manifest(
        cls,
        models_dir: Path,
        variant: ModelVariant,
        *,
        threads: int = 1,
        device: Device = "cpu",
    ) -> GeneratorRuntime:
        """The runtime for a variant listed in the manifest of `models_dir`."""
        directory = PurePosixPath(variant.directory)
        onnx_file = PurePosixPath(variant.entry).relative_to(directory)
        return cls(models_dir / directory, Path(onnx_file), threads=threads, device=device)

    def generate(
        self, conversations: Sequence[Sequence[ChatTurn]], max_tokens: int
    ) -> list[Generation]:
        """The assistant's next turn in each conversation: at most `max_tokens` new tokens,
        each the most likely one (the lowest id among equals), up to the end of the turn.

        Raises BadInput when a prompt and `max_tokens` together exceed the model's context.
        """
        if max_tokens < 1:
            raise BadInput(f"max_tokens must be at least 1, got {max_tokens}")
        prompts = [self.prompt_ids(turns) for turns in conversations]
        for index, prompt in enumerate(prompts):
            if len(prompt) + max_tokens > self.context:
                raise BadInput(
                    f"conversation {index} is too long: its prompt holds {len(prompt)} tokens,"
                    f" and with max_tokens {max_tokens} that exceeds the model's context of"
                    f" {self.context} tokens"
                )
        return [self._greedy(prompt, max_tokens) for prompt in prompts]

    def prompt_ids(self, turns: Sequence[ChatTurn]) -> list[int]:
        """The token ids of a conversation in the model's chat template, ready for the
        assistant's answer."""
        text = self._template.render(
            messages=[{"role": turn.role, "content": turn.content} for turn in turns],
            add_generation_prompt=True,
        )
        # The template writes the special tokens itself.
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        """The text of generated token ids, special tokens left out."""
        text: str = self._tokenizer.decode(list(tokens), skip_special_tokens=True)
        return text

    def _greedy(self, prompt: list[int], max_tokens: int) -> Generation:
        feed: dict[str, npt.NDArray[Any]] = dict(self._empty_past)
        step = np.array([prompt], dtype=np.int64)
        seen = 0
        tokens: list[int] = []
        finish: Literal["stop", "length"] = "length"
        while len(tokens) < max_tokens:
            length = step.shape[1]
            feed["input_ids"] = step
            feed["attention_mask"] = np.ones((1, seen + length), dtype=np.int64)
            if self._has_positions:
                feed["position_ids"] = np.arange(seen, seen + length, dtype=np.int64)[None, :]
            logits, *present = self._session.run(["logits", *self._present_names], feed)
            # argmax returns the first of equal maxima: the lowest token id.
            token = int(np.argmax(logits[0, -1]))
            if token in self._stops:
                finish = "stop"
                break
            tokens.append(token)
            feed.update(zip(self._past_names, present, strict=True))
            seen += length
            step = np.array([[token]], dtype=np.int64)
        return Generation(text=self.decode(tokens), tokens=tokens, finish_reason=finish)


def _empty_cache(shape: Sequence[int | str | None]) -> npt.NDArray[np.float32]:
    """A cache input holding no past tokens: (batch 1, heads, length 0, head size)."""
    _batch, heads, _length, size = shape
    if not isinstance(heads, int) or not isinstance(size, int):
        raise ModelsNotPrepared(f"a KV cache input of shape {list(shape)} has no fixed heads")
    return np.zeros((1, heads, 0, size), dtype=np.float32)
