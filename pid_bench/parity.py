"""`pid-bench parity DIR`: our PiD against the reference oracle's vectors and key manifests.

DIR has the layout of `pid_reference/`: `golden/INDEX.json` lists forward and sampler cases,
`keys/*.json` are state-dict manifests of the released checkpoints, `backbones/golden/` holds
the codec vectors. Each kind of case has exactly one pass criterion, the oracle's own
(`NET_STANDARD`, `CODEC_STANDARD`); the tests import these same objects, so a test can never
be stricter or looser than `pid-bench parity`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from pid_models.checkpoints import build_net, load_weights
from pid_models.pid_net import PidNet
from pid_models.registry import TEACHERS, experiment_by_name, registry_keys
from pid_models.sampler import sample


@dataclass(frozen=True)
class Agreement:
    """How closely one output matches its golden tensor, and whether that meets a standard;
    `failed_bound` names the bound that failed ("" when it passed)."""

    max_abs: float
    mean_abs: float
    passed: bool
    failed_bound: str = ""

    def __bool__(self) -> bool:
        return self.passed


@dataclass(frozen=True)
class Standard:
    """A pass criterion stated by the oracle: ``|out - ref| <= atol + rtol * |ref|`` everywhere
    (torch.allclose) and, when ``mean_tol`` is set, ``mean |out - ref| <= mean_tol``."""

    name: str
    atol: float
    rtol: float = 0.0
    mean_tol: float | None = None

    def check(self, out: torch.Tensor, ref: torch.Tensor) -> Agreement:
        if out.shape != ref.shape:
            shapes = f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
            return Agreement(float("inf"), float("inf"), False, shapes)
        diff = (out.double() - ref.double()).abs()
        mean = diff.mean().item()
        failed = []
        if not torch.allclose(out.double(), ref.double(), atol=self.atol, rtol=self.rtol):
            excess = (diff - (self.atol + self.rtol * ref.double().abs())).max().item()
            failed.append(
                f"allclose(atol={self.atol:g}, rtol={self.rtol:g}) exceeded by {excess:.2e} at worst"
            )
        if self.mean_tol is not None and mean > self.mean_tol:
            failed.append(f"mean {mean:.2e} > {self.mean_tol:g}")
        return Agreement(diff.max().item(), mean, not failed, "; ".join(failed))

    def explain(self, agreement: Agreement, what: str = "output") -> str:
        """A failure message a person can act on."""
        bound = f"allclose(atol={self.atol:g}, rtol={self.rtol:g})"
        if self.mean_tol is not None:
            bound += f" and mean <= {self.mean_tol:g}"
        return (
            f"{what}: max_abs={agreement.max_abs:.3e} mean_abs={agreement.mean_abs:.3e} "
            f"fails the {self.name} ({bound}): {agreement.failed_bound}"
        )


#: pid_reference/README.md 3.3, "Standard" (revised 2026-12-05 from mean <= 1e-6): the network
#: forward and the sampler. The golden tensors carry about 1e-6 mean of their own float32
#: rounding (the same in float64 on some CPUs), so 5e-6 sits above the full-float64 spread
#: (3.9e-6) and about 9x below the GELU-approximation bug the bound must catch (4.4e-5).
NET_STANDARD = Standard("oracle standard", atol=1e-4, rtol=1e-4, mean_tol=5e-6)
#: README.md 3.3, "Lenient": for paths the golden vectors do not pin bit for bit (a sample
#: alone vs inside its batch moves outputs by up to 5.5e-5 on the oracle's machine).
LENIENT_STANDARD = Standard("oracle lenient standard", atol=1e-3, rtol=1e-3, mean_tol=1e-5)
#: backbones/README.md: encode mean, normalised latent, decode (and noise) each within 2e-5.
CODEC_STANDARD = Standard("codec standard", atol=2e-5)
CODEC_TOL = CODEC_STANDARD.atol


@dataclass
class CaseResult:
    name: str
    kind: str  # forward | sampler | manifest | codec | skipped
    passed: bool
    max_abs: float | None = None
    mean_abs: float | None = None
    detail: str = ""
    failed_bound: str = ""  # which bound failed, e.g. "mean 1.76e-06 > 5e-06"

    def line(self) -> str:
        verdict = "SKIP" if self.kind == "skipped" else ("PASS" if self.passed else "FAIL")
        if self.failed_bound:
            verdict += f" ({self.failed_bound})"
        numbers = (
            f"max_abs={self.max_abs:.3e}  mean_abs={self.mean_abs:.3e}"
            if self.max_abs is not None
            else ""
        )
        return "  ".join(
            part for part in (f"{self.name:<58}", numbers, verdict, self.detail) if part
        )


def load_case(golden: Path, entry: dict) -> tuple[dict, dict[str, torch.Tensor], PidNet]:
    sidecar = json.loads((golden / entry["sidecar"]).read_text())
    # Clone: memory-mapped tensors are not 64-byte aligned and round differently on CPU.
    tensors = {k: v.clone() for k, v in load_file(golden / entry["safetensors"]).items()}
    net = PidNet(**sidecar["net_kwargs"])
    weights = {k: v for k, v in tensors.items() if k.startswith("net.")}
    load_weights(net, weights, str(golden / entry["safetensors"]))
    return sidecar, tensors, net.eval()


@torch.no_grad()
def run_forward(golden: Path, entry: dict) -> CaseResult:
    _, t, net = load_case(golden, entry)
    want_aux = "output_aux.pred_lq_rgb" in t
    out = net(
        t["input.x"], t["input.t"], t["input.y"],
        lq_latent=t["input.lq_latent"], degrade_sigma=t["input.degrade_sigma"],
        return_lq_aux=want_aux,
    )  # fmt: skip
    pairs = (
        [(out[0], t["output"]), (out[1]["pred_lq_rgb"], t["output_aux.pred_lq_rgb"])]
        if want_aux
        else [(out, t["output"])]
    )
    return _worst(entry["case"], "forward", pairs, "output + aux head" if want_aux else "")


@torch.no_grad()
def run_sampler(golden: Path, entry: dict) -> CaseResult:
    _, t, net = load_case(golden, entry)
    t_list = t["sampler.t_list"].tolist()
    steps = len(t_list) - 1
    result = sample(
        net, t["input.y"], t["input.lq_latent"], t["input.degrade_sigma"],
        tuple(t["sampler.noise"].shape), steps=steps, t_list=t_list,
        noise=t["sampler.noise"], eps=[t[f"sampler.eps.{k}"] for k in range(steps - 1)],
        record_steps=True,
    )  # fmt: skip
    pairs = [(result.unclamped, t["output_unclamped"]), (result.image, t["output"])]
    for k, step in enumerate(result.steps):
        for name in ("v_pred", "x0_pred"):
            if f"sampler.{name}.{k}" in t:
                pairs.append((step[name], t[f"sampler.{name}.{k}"]))
    return _worst(entry["case"], "sampler", pairs, f"{steps} steps, every intermediate")


def _worst(
    name: str, kind: str, pairs: list, detail: str, standard: Standard = NET_STANDARD
) -> CaseResult:
    """Every pair is held to `standard` on its own (a composite path stage by stage)."""
    results = [standard.check(out, ref) for out, ref in pairs]
    failed = next((r.failed_bound for r in results if not r), "")
    return CaseResult(
        name, kind, all(results),
        max(r.max_abs for r in results), max(r.mean_abs for r in results), detail, failed,
    )  # fmt: skip


def run_manifest(path: Path) -> CaseResult:
    """State-dict keys (in order), shapes and parameter count of the meta-built network."""
    manifest = json.loads(path.read_text())
    name = f"keys/{path.stem}"
    net = build_net(manifest["net_kwargs"], "meta")
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    problems = []
    if list(ours) != list(manifest["state_dict"]):
        missing = sorted(set(manifest["state_dict"]) - set(ours))
        extra = sorted(set(ours) - set(manifest["state_dict"]))
        problems.append(
            f"keys differ (missing {missing[:4]}, extra {extra[:4]})"
            if missing or extra
            else "key order differs"
        )
    shapes = [
        k for k in ours if k in manifest["state_dict"] and ours[k] != manifest["state_dict"][k]
    ]
    if shapes:
        problems.append(f"shapes differ: {shapes[:4]}")
    if net.config != manifest["net_kwargs"]:
        problems.append("PidNet.config differs from the manifest's net_kwargs")
    num_params = sum(p.numel() for p in net.parameters())
    if num_params != manifest["num_params"]:
        problems.append(f"num_params {num_params} != {manifest['num_params']}")
    problems += _registry_problems(manifest)
    detail = f"{len(ours)} tensors, {num_params:,} params" if not problems else "; ".join(problems)
    return CaseResult(name, "manifest", not problems, detail=detail)


def _registry_problems(manifest: dict) -> list[str]:
    experiment = experiment_by_name(manifest["experiment"])
    if experiment is None:
        return [f"experiment {manifest['experiment']} is not in pid_models.registry"]
    problems = []
    if dict(experiment.net_kwargs) != manifest["net_kwargs"]:
        differ = sorted(
            k for k in set(experiment.net_kwargs) | set(manifest["net_kwargs"])
            if experiment.net_kwargs.get(k) != manifest["net_kwargs"].get(k)
        )  # fmt: skip
        problems.append(f"registry net_kwargs differ: {differ}")
    want = sorted(tuple(pair) for pair in manifest.get("registry_keys_backbone_ckpt_type", []))
    if want and sorted(registry_keys(experiment)) != want:
        problems.append(f"registry keys {sorted(registry_keys(experiment))} != {want}")
    if manifest.get("checkpoint_path") not in (None, experiment.checkpoint_relpath):
        problems.append(
            f"checkpoint path {experiment.checkpoint_relpath} != {manifest['checkpoint_path']}"
        )
    return problems


RUNNERS = {"forward": run_forward, "sampler": run_sampler}


def run_parity(root: Path) -> Iterator[CaseResult]:
    """Every case found under `root`, one result each, in a stable order."""
    index = root / "golden" / "INDEX.json"
    if index.is_file():
        for entry in json.loads(index.read_text())["files"]:
            runner = RUNNERS.get(entry.get("kind"))
            if runner is None:
                yield CaseResult(
                    entry["case"], "skipped", True, detail=f"unknown kind {entry.get('kind')!r}"
                )
                continue
            try:
                yield runner(root / "golden", entry)
            except Exception as err:  # a broken case is a failure with its reason, not a crash
                yield CaseResult(entry["case"], entry["kind"], False, detail=f"error: {err}")
    for path in sorted((root / "keys").glob("*.json")):
        try:
            yield run_manifest(path)
        except Exception as err:
            yield CaseResult(f"keys/{path.stem}", "manifest", False, detail=f"error: {err}")
    for experiment in TEACHERS.values():
        if not (root / "keys" / f"{experiment.name}.json").is_file():
            yield CaseResult(
                f"keys/{experiment.name}", "skipped", True,
                detail="no manifest in the oracle for this undistilled teacher; its network is "
                "the distilled v1.5 one's (checked above)",
            )  # fmt: skip
    codec_dir = root / "backbones" / "golden"
    for path in sorted(codec_dir.glob("*.json")) if codec_dir.is_dir() else []:
        sidecar = json.loads(path.read_text())
        if "weights_file" not in sidecar:
            continue  # not a codec case (e.g. diffusers_check.json)
        try:
            yield run_codec(codec_dir, sidecar)
        except NotImplementedError as err:
            yield CaseResult(f"codec/{path.stem}", "skipped", True, detail=str(err))
        except Exception as err:
            yield CaseResult(f"codec/{path.stem}", "codec", False, detail=f"error: {err}")


@torch.no_grad()
def run_codec(golden: Path, sidecar: dict) -> CaseResult:
    """Encode mean, PiD latent, decode of the golden latent and the noise formula of one codec."""
    from pid_models.codecs import add_noise, build_codec
    from pid_models.codecs.kl import read_weights

    backbone = sidecar["backbone"]
    weights = read_weights(golden / sidecar["weights_file"].split()[0])
    config = sidecar["diffusers_equivalent"]["config"]
    codec = build_codec(backbone, weights, config, identity=f"golden-{backbone}")
    io = {k: v.clone() for k, v in load_file(golden / f"{backbone}_io.safetensors").items()}
    sigma, seed = sidecar["degrade_example"]["sigma"], sidecar["degrade_example"]["noise_seed"]
    noised = add_noise(io["latent"], sigma, codec.noise_form, torch.Generator().manual_seed(seed))
    pairs = [
        (codec.encode_raw(io["image"]), io["raw_mean"]),
        (codec.encode(io["image"]), io["latent"]),
        (codec.decode(io["latent"]), io["decoded"]),
        (noised, io["latent_noised"]),
    ]
    detail = f"encode mean, latent, decode, noise ({codec.noise_form}); tol {CODEC_TOL:g}"
    return _worst(f"codec/{backbone}", "codec", pairs, detail, CODEC_STANDARD)
