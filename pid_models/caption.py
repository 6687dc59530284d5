"""Caption conditioning: Gemma-2-2b-it hidden states, as PiD was trained with them.

Recipe (pid_reference README section 6): prefix the caption with the "chi prompt", tokenise
to N_chi + max_length - 2 tokens with right padding and truncation, run the decoder stack,
keep token 0 (BOS) and the last max_length - 1 positions -> [B, max_length, hidden].
No mask reaches PiD; padding positions are used as they are.

Encoding runs once per caption and machine: `CachedCaptionEncoder` keeps embeddings on disk,
keyed by the encoder's identity and the caption text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file

GEMMA_ID = "Efficient-Large-Model/gemma-2-2b-it"
MODEL_MAX_LENGTH = 300
CACHE_ENV = "PID_BENCH_CACHE"


def chi_prompt() -> str:
    """The caption prefix shared by every released experiment (lines joined by newlines)."""
    data = json.loads(resources.files("pid_models.data").joinpath("chi_prompt.json").read_text())
    return "\n".join(data["lines"])


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pid_bench")


class CaptionEncoder(Protocol):
    """Anything that turns captions into PiD's `y`: [B, max_length, hidden] float32."""

    identity: str
    hidden_size: int

    def encode(self, captions: Sequence[str]) -> torch.Tensor: ...


class GemmaCaptionEncoder:
    """Gemma-2 decoder stack + tokenizer, run as upstream does.

    Args:
        model: a Gemma-2 causal LM or its decoder stack (`get_decoder()` is taken if present).
        tokenizer: its tokenizer; padding is forced to the right.
        identity: names the weights for the embedding cache (different weights, different key).
        max_length: tokens kept (300 for released PiD; the tiny default uses fewer).
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer, identity: str, max_length: int = MODEL_MAX_LENGTH
    ) -> None:
        self.decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        self.decoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.max_length = max_length
        self.hidden_size = int(self.decoder.config.hidden_size)
        self.prefix = chi_prompt()
        self.prefix_tokens = len(self.tokenizer.encode(self.prefix))  # N_chi, BOS included
        self.identity = f"{identity}|max_length={max_length}|chi={_digest(self.prefix)[:12]}"

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = GEMMA_ID,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        max_length: int = MODEL_MAX_LENGTH,
    ) -> GemmaCaptionEncoder:
        """Load from a local folder or the HF cache; never touches the network."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = resolve_pretrained(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        identity = f"gemma2:{name_or_path}:{_folder_fingerprint(folder)}:{dtype}"
        return cls(model.to(device), tokenizer, identity, max_length)

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def tokenize(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            [self.prefix + caption for caption in captions],
            max_length=self.prefix_tokens + self.max_length - 2,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenize(captions)
        hidden = self.decoder(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        ).last_hidden_state
        keep = [0, *range(hidden.shape[1] - (self.max_length - 1), hidden.shape[1])]
        return hidden[:, keep].float()


def resolve_pretrained(name_or_path: str | os.PathLike) -> Path:
    """A local folder as given, else the HF cache snapshot of that repo id (offline)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError) as err:
        raise FileNotFoundError(
            f"caption encoder {name_or_path!r} is neither a local folder nor in the HF cache "
            f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}). "
            f"Fetch it once with: hf download {name_or_path}"
        ) from err


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _folder_fingerprint(folder: Path) -> str:
    """Config text plus weight file names and sizes: cheap, and changes when the weights do."""
    parts = []
    for file in sorted(folder.iterdir()):
        if file.name == "config.json":
            parts.append(file.read_text())
        elif file.suffix in (".safetensors", ".bin"):
            parts.append(f"{file.name}:{file.stat().st_size}")
    return _digest("\n".join(parts))[:16]


class CaptionCache:
    """On-disk embeddings: ROOT/captions/<identity hash>/<caption hash>.safetensors."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, identity: str, caption: str) -> Path:
        return self.root / "captions" / _digest(identity)[:16] / f"{_digest(caption)}.safetensors"

    def get(self, identity: str, caption: str) -> torch.Tensor | None:
        path = self.path(identity, caption)
        if not path.is_file():
            return None
        try:
            return load_file(path)["y"]
        except Exception:  # a corrupt entry is recomputed, never trusted
            return None

    def put(self, identity: str, caption: str, embedding: torch.Tensor) -> None:
        path = self.path(identity, caption)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(
            {"y": embedding.detach().cpu().contiguous()},
            str(tmp),
            metadata={"identity": identity, "caption": caption},
        )
        os.replace(tmp, path)


class CachedCaptionEncoder:
    """Wraps an encoder: each caption is encoded once per machine (and once per process)."""

    def __init__(self, encoder: CaptionEncoder, cache: CaptionCache | None = None) -> None:
        self.encoder = encoder
        self.cache = cache or CaptionCache()
        self.identity = encoder.identity
        self.hidden_size = encoder.hidden_size
        self._memory: dict[str, torch.Tensor] = {}
        self.encoded = 0  # captions that went through the encoder (not served from a cache)

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        todo = [c for c in dict.fromkeys(captions) if self._lookup(c) is None]
        if todo:
            fresh = self.encoder.encode(todo)
            self.encoded += len(todo)
            for caption, embedding in zip(todo, fresh, strict=True):
                self.cache.put(self.identity, caption, embedding)
                self._memory[caption] = embedding.cpu()
        return torch.stack([self._memory[c] for c in captions])

    def _lookup(self, caption: str) -> torch.Tensor | None:
        if caption not in self._memory:
            found = self.cache.get(self.identity, caption)
            if found is not None:
                self._memory[caption] = found
        return self._memory.get(caption)
