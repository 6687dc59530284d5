"""What every cell of a run shares: `CellSettings`, built once by the driver from the suite."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pid_bench.suite import LdmOptions
    from pid_bench.timing import TimingPolicy


def image_policy(value: object) -> object:
    """`save_images: true | false` read as all | none (other values pass through)."""
    return {True: "all", False: "none"}.get(value, value) if isinstance(value, bool) else value


@dataclass(frozen=True)
class CellSettings:
    """What every cell of a run shares (from the suite and the driver)."""

    run_id: str
    suite: str
    decoders: tuple[str, ...]
    metrics: tuple[str, ...]
    timing: TimingPolicy
    save_images: str  # all | reference_and_pid | none (suite save_images:)
    run_dir: str
    provenance: dict = field(default_factory=dict)  # git sha, versions
    checkpoints: str | None = None  # PiD download root (else $PID_BENCH_CHECKPOINTS)
    ldm: LdmOptions | None = None  # from_ldm suites
    save_xt_steps: tuple[int, ...] = ()  # every x_t step of the suite: one capture serves all
    faults: dict | None = None  # test-only fault injection (pid_bench.runner.FAULTS_ENV)
    tile_size: int | None = None  # PiD decodes in tiles of this many output pixels
    tile_overlap: int = 256
    tf32: bool = True  # suite.pid.tf32: TF32 during CUDA PiD decodes
    generator_device: str = "decode"  # suite.pid.generator_device
    reference: str = "full_size"  # suite.reference: full_size | upsampled
    metric_paths: tuple[str, ...] = ()  # folders custom metric modules import from
    feature_extractor: str | None = None  # suite.set_metrics.feature_extractor (None: Inception)
    baselines: dict = field(default_factory=dict)  # suite.baselines as plain data
    teacher: dict = field(default_factory=dict)  # suite.teacher as plain data
    overlap: bool = False  # suite.overlap: PNG writes may run during CUDA timed decodes
    png_compress_level: int = 1  # pid_bench.images.PNG_COMPRESS_LEVEL

    def __post_init__(self) -> None:
        object.__setattr__(self, "save_images", image_policy(self.save_images))

    def pid_options(self, cell=None) -> dict:
        """Keyword arguments of `PiDDecoder` from the suite's `pid:` options and the cell's
        precision and compile axes."""
        device = None if self.generator_device == "decode" else self.generator_device
        options = {"tf32": self.tf32, "generator_device": device}
        if cell is not None:
            compile_mode = False if cell.compile == "eager" else cell.compile
            options |= {"precision": cell.precision, "compile": compile_mode}
        return options
