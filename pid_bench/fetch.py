"""`pid-bench fetch`: download what a suite's cells need, and nothing else, into the places the
doctor and the run read offline.

What a suite needs is read from the same declarations the doctor reads (`doctor.needed_components`,
the PiD registry, `CODEC_FILES`, `RAE_ENCODERS`, the LDM pipelines, the metric registry's weight
files), so a fetch leaves `pid-bench doctor SUITE` with every cell runnable. Four kinds of source:

- `HubFile`: one file of a Hub repository copied into a folder (PiD checkpoints and codecs into
  the download root, pyiqa's weights into the torch hub folder), as `hf download --local-dir`.
- `HubRepo`: the files of a repository matching patterns, into the HF cache (caption encoder,
  RAE encoders, LDM and upscaler pipelines), as `from_pretrained` reads them offline.
- `UrlFile`: a plain URL into a file (torchvision and CLIP weights, SR baselines' `url:`).
- `PyiqaCreated`: a pyiqa metric whose files only pyiqa knows; fetching creates it once.

Every download goes through huggingface_hub (progress bars, `.incomplete` files resumed with
Range requests, `HF_ENDPOINT`, `HF_TOKEN`) and is checked against the checksum its server
publishes (the Hub's ETag: sha256 for LFS files, the git blob id otherwise; torch hub's hash
prefix in a file name); a mismatch is deleted and reported, never kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pid_bench.metrics.weights import IQA_REPO
from pid_bench.paths import hf_cache_dir, torch_hub_dir
from pid_models.checkpoints import PID_REPO

__all__ = [
    "ChecksumMismatch",
    "FetchError",
    "FetchResult",
    "GatedRepo",
    "HubFile",
    "HubRepo",
    "PlannedFile",
    "PyiqaCreated",
    "Unreachable",
    "UrlFile",
    "download",
    "fetch",
    "hub_endpoint",
    "plan",
    "suite_needs",
]

#: What `from_pretrained(..., local_files_only=True)` reads of a diffusers pipeline: the configs,
#: tokenizers and the default (not variant, not .bin) safetensors of every component.
PIPELINE_PATTERNS = ("model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/*.safetensors")
PIPELINE_IGNORED = ("*.fp16.*", "*.bf16.*", "*.fp32.*", "*/*.ckpt")
#: A transformers model: configs, tokenizer files and safetensors weights.
MODEL_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors")
#: torch.hub's convention: `name-<sha256 prefix>.ext`.
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")
SHA256 = re.compile(r"[a-f0-9]{64}")
GIT_SHA1 = re.compile(r"[a-f0-9]{40}")


# --------------------------------------------------------------------------- errors


class FetchError(RuntimeError):
    """A source that could not be fetched; `kind` picks the exit code (cli)."""

    kind = "failed"


class Unreachable(FetchError):
    kind = "unreachable"


class GatedRepo(FetchError):
    kind = "gated"


class ChecksumMismatch(FetchError):
    kind = "checksum"


def hub_endpoint() -> str:
    """The Hub the environment names now ($HF_ENDPOINT, else huggingface_hub's default)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _hub_error(exc: Exception, repo_id: str) -> FetchError:
    """A huggingface_hub / network exception as the FetchError a person can act on."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    endpoint = hub_endpoint()
    if isinstance(exc, GatedRepoError):
        return GatedRepo(
            f"{repo_id} is gated: accept its licence at {endpoint}/{repo_id} with the account "
            "whose token you use, then `hf auth login` (or set HF_TOKEN) and rerun"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return FetchError(
            f"{repo_id} not found at {endpoint} (a typo, or a private repo: `hf auth login`)"
        )
    if isinstance(exc, _transport_errors()):
        return Unreachable(f"cannot reach {endpoint} for {repo_id}: {exc}")
    return FetchError(f"{repo_id}: {exc}")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection / timeout errors (huggingface_hub's client: httpx2, or
    httpx in older releases), and the OS's."""
    import importlib

    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


# --------------------------------------------------------------------------- checksums


def _expected_checksum(etag: str | None) -> str | None:
    """'sha256:<hex>' or 'git-sha1:<hex>' from a Hub ETag, None for anything else."""
    if not etag:
        return None
    etag = etag.strip('"').removeprefix("W/").strip('"')
    if SHA256.fullmatch(etag):
        return f"sha256:{etag}"
    if GIT_SHA1.fullmatch(etag):
        return f"git-sha1:{etag}"
    return None


def file_checksum(path: Path, kind: str) -> str:
    """`kind:hex` of a file: sha256 of its bytes, or the git blob id (sha1 over 'blob N\\0')."""
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1()
    if kind == "git-sha1":
        digest.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{kind}:{digest.hexdigest()}"


def matches(path: Path, checksum: str) -> bool:
    """Whether the file's checksum is `checksum` ('sha256:<prefix or full hex>' / 'git-sha1:')."""
    kind, _, expected = checksum.partition(":")
    return file_checksum(path, kind).partition(":")[2].startswith(expected)


def _refuse(path: Path, checksum: str, source: str) -> ChecksumMismatch:
    """Delete a downloaded file that does not match, and the error that says so."""
    got = file_checksum(path, checksum.partition(":")[0])
    target = path.resolve()
    path.unlink(missing_ok=True)
    if target != path:  # an HF-cache snapshot link: drop its blob too
        target.unlink(missing_ok=True)
    return ChecksumMismatch(
        f"{source}: downloaded file does not match its published checksum (expected "
        f"{checksum}, got {got}); deleted, nothing kept. Rerun to download it again"
    )


# --------------------------------------------------------------------------- the plan


@dataclass
class PlannedFile:
    """One file: where it comes from, where it goes, its size and checksum where the server
    says, and whether a file of that size is already there."""

    needed_by: list[str]
    source: str
    dest: str
    size: int | None
    checksum: str | None
    present: bool
    note: str | None = None
    origin: Any = field(default=None, repr=False)  # the Wanted it came from
    listed: bool = True  # False: the server could not be asked (`note` says why)
    key: Any = field(default=None, repr=False)  # what the origin needs to download it


def _present(path: Path | None, size: int | None, checksum: str | None, verify: bool) -> bool:
    if path is None or not path.is_file():
        return False
    if size is not None and path.stat().st_size != size:
        return False
    return not (verify and checksum) or matches(path, checksum)


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repository, copied to `local_dir / filename`."""

    needed_by: str
    repo_id: str
    filename: str
    local_dir: Path

    @property
    def source(self) -> str:
        return f"{self.repo_id}:{self.filename}"

    def list(self, verify: bool) -> list[PlannedFile]:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(self.repo_id, self.filename, endpoint=hub_endpoint())
        try:
            meta = get_hf_file_metadata(url)
        except Exception as exc:
            raise _hub_error(exc, self.repo_id) from exc
        dest = self.local_dir / self.filename
        checksum = _expected_checksum(meta.etag)
        present = _present(dest, meta.size, checksum, verify)
        return [PlannedFile([self.needed_by], self.source, str(dest), meta.size, checksum, present,
                            origin=self)]  # fmt: skip

    def unlisted(self, why: FetchError) -> list[PlannedFile]:
        """The file as this machine has it, when the server could not be asked."""
        dest = self.local_dir / self.filename
        return [PlannedFile([self.needed_by], self.source, str(dest), None, None, dest.is_file(),
                            str(why), origin=self, listed=False)]  # fmt: skip

    def download(self, planned: PlannedFile) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(
                self.repo_id, self.filename, local_dir=self.local_dir, endpoint=hub_endpoint()
            )
        except Exception as exc:
            raise _hub_error(exc, self.repo_id) from exc
        return Path(path)


@dataclass(frozen=True)
class HubRepo:
    """The files of a Hub repository matching `patterns`, into the HF cache (refs/main set)."""

    needed_by: str
    repo_id: str
    patterns: tuple[str, ...] = MODEL_PATTERNS
    ignored: tuple[str, ...] = ()
    revision: str = "main"

    def list(self, verify: bool) -> list[PlannedFile]:
        from huggingface_hub import HfApi, try_to_load_from_cache
        from huggingface_hub.hf_api import RepoFile
        from huggingface_hub.utils import filter_repo_objects

        api = HfApi(endpoint=hub_endpoint())
        try:
            commit = api.repo_info(self.repo_id, revision=self.revision).sha
            entries = {
                entry.path: entry
                for entry in api.list_repo_tree(self.repo_id, recursive=True, revision=commit)
                if isinstance(entry, RepoFile)
            }
        except Exception as exc:
            raise _hub_error(exc, self.repo_id) from exc
        cache = hf_cache_dir()
        out = []
        for name in filter_repo_objects(
            entries,
            allow_patterns=list(self.patterns) or None,
            ignore_patterns=list(self.ignored) or None,
        ):
            entry = entries[name]
            size = entry.lfs.size if entry.lfs else entry.size
            checksum = f"sha256:{entry.lfs.sha256}" if entry.lfs else f"git-sha1:{entry.blob_id}"
            cached = try_to_load_from_cache(self.repo_id, name, cache_dir=cache, revision=commit)
            here = Path(cached) if isinstance(cached, str) else None
            out.append(
                PlannedFile(
                    [self.needed_by],
                    f"{self.repo_id}:{name}",
                    f"HF cache: {cache}/models--{self.repo_id.replace('/', '--')}",
                    size,
                    checksum,
                    _present(here, size, checksum, verify),
                    origin=self,
                    key=name,
                )  # fmt: skip
            )
        if not out:
            raise FetchError(f"{self.repo_id}: no file matches {', '.join(self.patterns)}")
        return out

    def unlisted(self, why: FetchError) -> list[PlannedFile]:
        """The repo as the HF cache has it (a usable snapshot counts as present)."""
        from huggingface_hub import snapshot_download

        cache = hf_cache_dir()
        try:
            snapshot_download(self.repo_id, cache_dir=cache, local_files_only=True)
            present = True
        except Exception:  # not cached, or no refs/main: not usable offline
            present = False
        dest = f"HF cache: {cache}/models--{self.repo_id.replace('/', '--')}"
        source = f"{self.repo_id}:{','.join(self.patterns)}"
        return [PlannedFile([self.needed_by], source, dest, None, None, present, str(why),
                            origin=self, listed=False)]  # fmt: skip

    def download(self, planned: PlannedFile) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(self.repo_id, planned.key, revision=self.revision,
                                   cache_dir=hf_cache_dir(), endpoint=hub_endpoint())  # fmt: skip
        except Exception as exc:
            raise _hub_error(exc, self.repo_id) from exc
        return Path(path)


@dataclass(frozen=True)
class UrlFile:
    """A plain URL into `dest`. The checksum is `sha256` when given, else a sha256 ETag the
    server publishes, else the hash prefix in the file name (torch.hub's convention)."""

    needed_by: str
    url: str
    dest: Path
    sha256: str | None = None

    @property
    def source(self) -> str:
        return self.url

    def _checksum(self, etag: str | None) -> str | None:
        if self.sha256:
            return f"sha256:{self.sha256.lower()}"
        published = _expected_checksum(etag)
        if published and published.startswith("sha256:"):
            return published
        found = HASH_IN_NAME.search(Path(self.url.split("?")[0]).name)
        return f"sha256:{found.group(1)}" if found else None

    def list(self, verify: bool) -> list[PlannedFile]:
        size, etag, note = None, None, None
        try:
            request = urllib.request.Request(self.url, method="HEAD")
            with urllib.request.urlopen(request, timeout=10) as response:
                length = response.headers.get("X-Linked-Size") or response.headers.get(
                    "Content-Length"
                )
                size = int(length) if length else None
                etag = response.headers.get("X-Linked-Etag") or response.headers.get("ETag")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            note = f"size unknown: {getattr(exc, 'reason', exc)}"
        checksum = self._checksum(etag)
        present = _present(self.dest, size, checksum, verify)  # size unknown: the file's there
        return [PlannedFile([self.needed_by], self.url, str(self.dest), size, checksum, present,
                            note, origin=self)]  # fmt: skip

    def download(self, planned: PlannedFile) -> Path:
        from huggingface_hub.file_download import http_get

        partial = self.dest.with_name(self.dest.name + ".incomplete")
        partial.parent.mkdir(parents=True, exist_ok=True)
        resume = partial.stat().st_size if partial.is_file() else 0
        try:
            with partial.open("ab") as handle:
                http_get(self.url, handle, resume_size=resume, expected_size=planned.size,
                         displayed_filename=self.dest.name)  # fmt: skip
        except Exception as exc:
            raise Unreachable(f"cannot download {self.url}: {exc}") from exc
        partial.replace(self.dest)
        return self.dest


@dataclass(frozen=True)
class PyiqaCreated:
    """A pyiqa metric whose weight files pyiqa names only when it creates the metric."""

    needed_by: str
    pyiqa_name: str

    def list(self, verify: bool) -> list[PlannedFile]:
        note = "pyiqa names and downloads its files when it creates the metric"
        return [PlannedFile([self.needed_by], f"pyiqa.create_metric({self.pyiqa_name!r})",
                            str(torch_hub_dir() / "pyiqa"), None, None, False, note,
                            origin=self)]  # fmt: skip

    def download(self, planned: PlannedFile) -> Path:
        import pyiqa

        try:
            pyiqa.create_metric(self.pyiqa_name, device="cpu")
        except Exception as exc:
            raise FetchError(f"pyiqa could not create {self.pyiqa_name!r}: {exc}") from exc
        return torch_hub_dir() / "pyiqa"


Wanted = HubFile | HubRepo | UrlFile | PyiqaCreated


# --------------------------------------------------------------------------- what a suite needs


def suite_needs(suite, root: str | os.PathLike | None) -> list[Wanted]:
    """Every source the cells of `suite` read, each once (doctor's components, the suite's
    baselines, its metrics' weights). `root` is the PiD download root."""
    from pid_bench.doctor import needed_components

    wanted: list[Wanted] = []
    modes: dict[tuple[str, str], set[str]] = {}
    for cell in suite.cells():
        modes.setdefault((cell.backbone, cell.ckpt_type), set()).add(cell.mode)
    for pair, pair_modes in sorted(modes.items()):
        components = {c for mode in pair_modes for c in needed_components(mode)}
        wanted += _pair_needs(suite, pair, components, root)
    wanted += _baseline_needs(suite)
    wanted += _metric_needs(suite)
    return list(dict.fromkeys(wanted))  # plan merges the needed_by of one file's sources


def _pair_needs(suite, pair: tuple[str, str], components: set[str], root) -> list[Wanted]:
    from pid_models.caption import GEMMA_ID
    from pid_models.codecs import CODEC_FILES, RAE_ENCODERS
    from pid_models.registry import EMBEDDED_PAIRS, canonical_backbone, resolve, teacher

    if pair in EMBEDDED_PAIRS:
        return []
    backbone, ckpt_type = pair
    label = f"{backbone}/{ckpt_type}"
    out: list[Wanted] = []
    folder = _root(root)
    if "pid_checkpoint" in components:
        out.append(HubFile(f"PiD {label}", PID_REPO, resolve(*pair).checkpoint_relpath, folder))
        if "pid-teacher" in suite.decoders:
            relpath = teacher(*pair).checkpoint_relpath
            out.append(HubFile(f"PiD teacher {label}", PID_REPO, relpath, folder))
    canonical = canonical_backbone(backbone)
    if "codec" in components and canonical in CODEC_FILES:
        out += [
            HubFile(f"codec {canonical}", PID_REPO, rel, folder) for rel in CODEC_FILES[canonical]
        ]
        if canonical in RAE_ENCODERS:
            out.append(HubRepo(f"RAE encoder {canonical}", RAE_ENCODERS[canonical]))
    if "caption_encoder" in components:
        out.append(HubRepo("caption encoder", GEMMA_ID))
    if "ldm_pipeline" in components:
        out += _pipeline(f"LDM {backbone}", _ldm_source(suite, backbone))
    return out


def _root(root: str | os.PathLike | None) -> Path:
    from pid_models.checkpoints import checkpoints_root

    base = checkpoints_root(root)  # raises CheckpointError naming --checkpoints / the env var
    # doctor and the loaders accept DIR or DIR/checkpoints; files land in DIR/checkpoints/...
    return base.parent if base.name == "checkpoints" else base


def _ldm_source(suite, backbone: str) -> str | None:
    from pid_models import ldm

    source = suite.ldm.source(backbone)
    spec = ldm.PIPELINES.get(backbone)
    return source or (spec.repo_id if spec else None)


def _pipeline(needed_by: str, source: str | None) -> list[Wanted]:
    """A diffusers pipeline repo into the HF cache; a local folder or none: nothing to fetch."""
    if source is None or Path(source).is_dir():
        return []
    return [HubRepo(needed_by, source, PIPELINE_PATTERNS, PIPELINE_IGNORED)]


def _baseline_needs(suite) -> list[Wanted]:
    from pid_models.baselines import SD_X4_UPSCALER

    out: list[Wanted] = []
    for name, options in suite.baselines.items():
        if f"native+{name}" not in suite.decoders:
            continue
        if options.kind == "sd_x4_upscaler":
            out += _pipeline(f"native+{name}", options.source or SD_X4_UPSCALER)
        elif options.url:
            out.append(UrlFile(f"native+{name}", _resolve_url(options.url), Path(options.path),
                               options.sha256))  # fmt: skip
    return out


def _resolve_url(url: str) -> str:
    """`hf://owner/repo/path/in/repo` as the current endpoint's resolve URL; others unchanged."""
    if not url.startswith("hf://"):
        return url
    owner, repo, path = url.removeprefix("hf://").split("/", 2)
    return f"{hub_endpoint()}/{owner}/{repo}/resolve/main/{path}"


def _metric_needs(suite) -> list[Wanted]:
    from pid_bench.metrics import expand_metric_names, get_metric

    out: list[Wanted] = []
    for name in expand_metric_names(suite.metrics):
        metric = get_metric(name)
        label = f"metric {name}"
        if metric.name.startswith("pyiqa:") and not metric.weights:
            out.append(PyiqaCreated(label, metric.pyiqa_name))
        for weight in metric.weights:
            if weight.loader == "pyiqa":
                folder = weight.expected().parent
                out.append(HubFile(label, IQA_REPO, weight.filename, folder))
            else:
                out.append(UrlFile(label, weight.url, weight.expected()))
    return out


# --------------------------------------------------------------------------- plan and fetch


@dataclass
class FetchResult:
    """What a plan or a fetch found: every file, and the sources that failed."""

    files: list[PlannedFile] = field(default_factory=list)
    failures: list[FetchError] = field(default_factory=list)
    fetched: list[PlannedFile] = field(default_factory=list)

    @property
    def bytes_to_fetch(self) -> int:
        return sum(f.size or 0 for f in self.files if not f.present)

    @property
    def exit_kind(self) -> str | None:
        """The failure the exit code reports: unreachable, then gated, then checksum, then any."""
        kinds = {failure.kind for failure in self.failures}
        return next((k for k in ("unreachable", "gated", "checksum", "failed") if k in kinds), None)


@contextlib.contextmanager
def _online() -> Iterator[None]:
    """Hub calls allowed for this block: `fetch` is the one command that goes online, and a
    shell (or this process's metrics) may have set HF_HUB_OFFLINE=1 for the runs."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def plan(wanted: Sequence[Wanted], verify: bool = False) -> FetchResult:
    """List every file of `wanted` (one request per source, nothing downloaded); a source that
    cannot be listed is a failure, the others are still listed."""
    with _online():
        return _plan(wanted, verify)


def _plan(wanted: Sequence[Wanted], verify: bool) -> FetchResult:
    result = FetchResult()
    by_source: dict[str, PlannedFile] = {}
    for item in wanted:
        try:
            files = item.list(verify)
        except FetchError as exc:  # what this machine has still shows; a missing file fails
            files = item.unlisted(exc)
            if not all(f.present for f in files) and str(exc) not in map(str, result.failures):
                result.failures.append(exc)
        for planned in files:
            if planned.source in by_source:
                by_source[planned.source].needed_by += planned.needed_by
            else:
                by_source[planned.source] = planned
                result.files.append(planned)
    return result


def fetch(wanted: Sequence[Wanted], verify: bool = False) -> FetchResult:
    """Download every file of `wanted` not already present (`plan`, then `download`)."""
    return download(plan(wanted, verify))


def download(result: FetchResult) -> FetchResult:
    """Download the files of a plan not already present, checking each against its published
    checksum; a failure is recorded and the other files are still fetched."""
    with _online():
        return _download(result)


def _download(result: FetchResult) -> FetchResult:
    for planned in result.files:
        if planned.present or not planned.listed:
            continue  # an unlisted file's failure is recorded already
        try:
            path = planned.origin.download(planned)
            if planned.checksum and path.is_file() and not matches(path, planned.checksum):
                raise _refuse(path, planned.checksum, planned.source)
        except FetchError as exc:
            result.failures.append(exc)
            continue
        result.fetched.append(planned)
    return result


def disk_free(path: Path) -> int:
    """Free bytes on the file system that will hold `path` (its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free
