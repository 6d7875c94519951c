"""How a candidate's outputs are judged, as one bundle from the command line (or the build) down to validation.

The ``--atol/--rtol/--precision/--policy/--chunk-size`` option family builds a :class:`Judgement`; the
validation entry points (``validate_candidate``, ``validate_runner``, ``validate_served`` ...), the
tuner and the serve check take it whole instead of five loose arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from hepdeploy.compare import ToleranceOverrides, parse_tolerance_values, precision_key
from hepdeploy.errors import BadInputError, DataError

if TYPE_CHECKING:
    from hepdeploy.spec import ModelSpec

POLICIES = ("numerical", "physics", "either", "both")
# Samples per inference call when neither the judgement nor a spec says.
DEFAULT_CHUNK_SIZE = 4096


@dataclass(frozen=True)
class Judgement:
    """What a candidate is held to. ``None`` everywhere means: decide from the candidate and the spec.

    - ``precision``: the tolerance table (fp32, fp16, int8; mixed is judged as int8). ``None``: the
      candidate's sidecar precision, else fp32.
    - ``atol``/``rtol``: overrides of the tolerances, one default and/or one per output.
    - ``policy``: what must pass (numerical, physics, either, both). ``None``: the spec's
      ``validation.policy``, else the precision's default.
    - ``chunk_size``: samples per inference call. ``None``: the spec's ``validation.chunk_size``, else 4096.
    """

    precision: str | None = None
    atol: ToleranceOverrides = field(default_factory=ToleranceOverrides)
    rtol: ToleranceOverrides = field(default_factory=ToleranceOverrides)
    policy: str | None = None
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.precision is not None:
            precision_key(self.precision)  # an unknown precision is refused here, before anything runs
        if self.policy is not None and self.policy not in POLICIES:
            raise DataError(f"unknown policy {self.policy!r} (one of {', '.join(POLICIES)})")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise BadInputError(f"chunk size {self.chunk_size}: must be >= 1")

    @classmethod
    def parse(cls, *, precision: str | None = None, atol: object = None, rtol: object = None,
              policy: str | None = None, chunk_size: int | None = None) -> Judgement:
        """From loose values: ``atol``/``rtol`` as ``1e-5``, ``'softmax:1e-3'``, a list of those, or ``{output: value}``."""
        return cls(precision, parse_tolerance_values(atol, "--atol"), parse_tolerance_values(rtol, "--rtol"), policy,
                   chunk_size)

    def with_precision(self, fallback: str | None) -> Judgement:
        """This judgement, with ``fallback`` (e.g. the sidecar's precision) where it names none."""
        return self if self.precision is not None or fallback is None else replace(self, precision=fallback)

    def chunk_for(self, spec: ModelSpec | None) -> int:
        """Samples per inference call: this judgement's, else the spec's, else the default."""
        if self.chunk_size is not None:
            return self.chunk_size
        return spec.validation.chunk_size if spec is not None else DEFAULT_CHUNK_SIZE
