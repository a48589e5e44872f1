"""Settings of the fitting stages, in small validated groups (lengths in model mm).

``FitConfig`` holds one group per part of the algorithm; each group checks its values
when it is built and names the setting in the error. Change settings by their names::

    cfg = FitConfig().replace(nicp=False, seed=3)        # any group's setting, by name
    cfg = FitConfig(refine=RefineConfig(occlusion=False))

The reasons for the default values, with the benchmark runs that chose them, are in
``docs/fitting.md`` and ``docs/benchmarks.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Callable

from ssm.errors import SSMError


class ConfigError(SSMError):
    """A fitting setting out of its valid range."""


# -- rules: each returns the problem with a value, or "" when it is valid ------------------

def _positive(v) -> str:
    return "" if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else "must be a number > 0"


def _non_negative(v) -> str:
    return "" if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else "must be a number >= 0"


def _count(minimum: int) -> Callable[[object], str]:
    def rule(v) -> str:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= minimum
        return "" if ok else f"must be an integer >= {minimum}"
    return rule


def _within(lo: float, hi: float) -> Callable[[object], str]:
    def rule(v) -> str:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi
        return "" if ok else f"must be a number in [{lo:g}, {hi:g}]"
    return rule


def _flag(v) -> str:
    return "" if isinstance(v, bool) else "must be True or False"


def _optional(rule: Callable[[object], str]) -> Callable[[object], str]:
    def check(v) -> str:
        return "" if v is None else rule(v)
    return check


def _levels(rule: Callable[[object], str]) -> Callable[[object], str]:
    def check(v) -> str:
        if not isinstance(v, tuple) or not v:
            return "must be a non-empty tuple"
        return next((f"each level {p}" for p in map(rule, v) if p), "")
    return check


class _Group:
    """A frozen group of settings; ``RULES`` maps each setting to its rule."""

    RULES: dict[str, Callable[[object], str]] = {}
    NAME = ""

    def __post_init__(self) -> None:
        for name, rule in self.RULES.items():
            value = getattr(self, name)
            if isinstance(value, list):  # a schedule given as a list: the tuple it means
                value = tuple(value)
                object.__setattr__(self, name, value)
            problem = rule(value)
            if problem:
                raise ConfigError(f"FitConfig {self.NAME}.{name} = {value!r}: {problem}")


@dataclass(frozen=True)
class InitConfig(_Group):
    """Initialisation: landmarks, the automatic search, the rigid refinement.

    landmark_sigma_mm : landmark noise assumed when the landmark file gives none.
    ransac_threshold_mm, ransac_iterations : inlier distance and random samples (more
        than 12 landmarks; fewer are all tried) of the robust landmark similarity.
    auto_points : scan points the automatic search matches; auto_icp_iterations : ICP
        iterations of each of its best hypotheses
        (:data:`ssm.fitting.initialise.search.REFINED_HYPOTHESES`).
    auto_candidates : distinct placements a short model fit chooses between.
    rigid_iterations : similarity-only iterations before the model fit (twice as many
        after the automatic search, whose start is rougher).
    """

    landmark_sigma_mm: float = 2.0
    ransac_threshold_mm: float = 12.0
    ransac_iterations: int = 300
    auto_points: int = 1500
    auto_icp_iterations: int = 12
    auto_candidates: int = 3
    rigid_iterations: int = 4

    NAME = "init"
    RULES = {"landmark_sigma_mm": _positive, "ransac_threshold_mm": _positive, "ransac_iterations": _count(1),
             "auto_points": _count(20), "auto_icp_iterations": _count(1), "auto_candidates": _count(1),
             "rigid_iterations": _count(1)}


@dataclass(frozen=True)
class ModelFitConfig(_Group):
    """The model fit: correspondences, sampling and the annealing schedule.

    max_distance_mm : the first correspondence gate; later gates follow the residuals
        (k robust sigmas) and never go below ``min_distance_mm``.
    normal_cos : least cosine between a model normal and its scan point's.
    scan_samples : scan points matched to the model per iteration (an exact iteration
        matches all of them, up to ``ssm.fitting.model_fit.iterate.EXACT_SCAN_POINTS``).
    component_schedule : components in play at each level (clipped to the model's);
        prior_schedule : the prior's weight at each level, stiff to soft: relaxing the
        prior with every component in play escapes the sliding minima that adding
        components one level at a time falls into. None: weight 1 at every level.
    iterations_per_level : closest-point iterations per level (one more without
        landmarks, where nothing holds the fit from sliding along the surface).
    solve_samples : correspondences per coefficient solve (a fresh random subset each
        iteration; the cost grows with samples x K^2). vertex_samples : model vertices
        matched per iteration (landmarks always in); None matches all.
    point_to_plane : share of a correspondence's weight on its normal residual: 1 lets
        the model slide along the scan to where its shape fits, where a closest point
        would pin a vertex where the current, wrong fit put it.
    overrelaxation : each solve's coefficient step is scaled by this; closest-point
        iterations converge linearly, and stepping past the solve needs fewer of them.
        The last iteration takes the plain solve (the MAP fit for its correspondences).
    """

    max_distance_mm: float = 20.0
    min_distance_mm: float = 2.0
    normal_cos: float = 0.3
    scan_samples: int = 8000
    component_schedule: tuple[int, ...] = (40, 80, 160, 100000, 100000)
    prior_schedule: tuple[float, ...] | None = (256.0, 64.0, 16.0, 4.0, 1.0)
    iterations_per_level: int = 7
    solve_samples: int = 4000
    vertex_samples: int | None = 6000
    point_to_plane: float = 1.0
    overrelaxation: float = 1.6

    NAME = "model_fit"
    RULES = {"max_distance_mm": _positive, "min_distance_mm": _positive, "normal_cos": _within(-1.0, 1.0),
             "scan_samples": _count(10), "component_schedule": _levels(_count(0)),
             "prior_schedule": _optional(_levels(_positive)), "iterations_per_level": _count(1),
             "solve_samples": _count(10), "vertex_samples": _optional(_count(10)),
             "point_to_plane": _within(0.0, 1.0), "overrelaxation": _within(0.5, 2.0)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prior_schedule is not None and len(self.prior_schedule) != len(self.component_schedule):
            raise ConfigError(f"FitConfig model_fit.prior_schedule has {len(self.prior_schedule)} levels and "
                              f"component_schedule {len(self.component_schedule)}: give both the same length")
        if self.min_distance_mm > self.max_distance_mm:
            raise ConfigError(f"FitConfig model_fit.min_distance_mm = {self.min_distance_mm!r}: must not exceed "
                              f"max_distance_mm ({self.max_distance_mm!r})")


@dataclass(frozen=True)
class RefineConfig(_Group):
    """What the model does not span: occlusion, deformation fields, non-rigid ICP, pose.

    occlusion : find regions where the scan lies well outside the fitted skin (hair, a
        cap) and refit the model without them; NICP leaves them out.
    landmark_warp : with 20 or more landmarks, where they agree the model fit is off
        (an expression), refit with a smooth deformation field over that region.
    warp_region_mm : a landmark warp larger than this marks the region.
    warp_basis_length_mm : the field's correlation length along the model's surface;
        warp_basis_taper_mm : how far outside its region it fades (Gaussian).
    warp_amplitude_scale : the warp refit's field amplitude is the landmark GP's (at
        least 1 mm) times this.
    warp_basis_smoothness : the Matern-like smoothness ``nu`` of the warp refit's
        field (dense landmarks pin sharper changes); None: the heat kernel.
    warp_landmark_sigma_scale : the landmarks' sigma in the warp refit, times this: a
        field of hundreds of local components would follow each landmark's noise.
    field_identity_sd : in refits with a deformation field the identity's prior
        deviations are this many times the model's: the identity from the first fit is
        bent by what it does not span, and a looser prior lets the field take it back.
    mirror_field : when the field a refit finds is mostly symmetric about the model's
        mirror plane, fit it again with its two sides correlated by that much.
    expression_field_mm : amplitude of the probe field over the whole model when the
        landmark warp does not apply; 0 leaves the expression field out.
    expression_field_gate_mm : refit with the field when the probe's field RMS over the
        vertices exceeds this (above the neutral faces' probes); 0 always refits.
    expression_model_gate_mm : with a model's own expression basis, fit the expression
        when the probe's expression RMS exceeds this; 0 always fits it.
    nicp : run non-rigid ICP; nicp_stiffness : membrane stiffness per level, stiff to
        soft (relative to the mean data weight); nicp_iterations : per level;
        nicp_model_weight : pull towards the model fit where the scan says nothing;
        nicp_point_to_plane : 1 moves vertices only along the normal (no sliding).
    pose_iterations : point-to-plane pose steps with the final shape.
    """

    occlusion: bool = True
    landmark_warp: bool = True
    warp_region_mm: float = 1.0
    warp_basis_length_mm: float = 30.0
    warp_basis_taper_mm: float = 50.0
    warp_basis_smoothness: float | None = 8.0
    warp_amplitude_scale: float = 1.4
    warp_landmark_sigma_scale: float = 1.5
    field_identity_sd: float = 2.0
    mirror_field: bool = True
    expression_field_mm: float = 1.0
    expression_field_gate_mm: float = 1.0
    expression_model_gate_mm: float = 1.35
    nicp: bool = True
    nicp_stiffness: tuple[float, ...] = (30.0, 10.0, 3.0, 1.0)
    nicp_iterations: int = 1
    nicp_model_weight: float = 0.02
    nicp_point_to_plane: float = 1.0
    pose_iterations: int = 3

    NAME = "refine"
    RULES = {"occlusion": _flag, "landmark_warp": _flag, "warp_region_mm": _positive,
             "warp_basis_length_mm": _positive, "warp_basis_taper_mm": _positive,
             "warp_basis_smoothness": _optional(_positive), "warp_amplitude_scale": _positive,
             "warp_landmark_sigma_scale": _positive, "field_identity_sd": _positive, "mirror_field": _flag,
             "expression_field_mm": _non_negative, "expression_field_gate_mm": _non_negative,
             "expression_model_gate_mm": _non_negative, "nicp": _flag, "nicp_stiffness": _levels(_positive),
             "nicp_iterations": _count(1), "nicp_model_weight": _non_negative,
             "nicp_point_to_plane": _within(0.0, 1.0), "pose_iterations": _count(0)}


@dataclass(frozen=True)
class UncertaintyConfig(_Group):
    """uncertainty_correlation : correspondences per independent observation in the
    posterior: neighbouring scan points share their errors, so each counts for less
    than one (chosen so that about 95 % of the face vertices of held-out scans lie
    within 2 sigma of the truth)."""

    uncertainty_correlation: float = 15.0

    NAME = "uncertainty"
    RULES = {"uncertainty_correlation": _within(1.0, 1e6)}


@dataclass(frozen=True)
class SmoothingConfig(_Group):
    """smooth_iterations : Taubin iterations where the fit is uncertain (0: off)."""

    smooth_iterations: int = 3

    NAME = "smoothing"
    RULES = {"smooth_iterations": _count(0)}


GROUPS = ("init", "model_fit", "refine", "uncertainty", "smoothing")


@dataclass(frozen=True)
class FitConfig:
    """Every setting of :func:`ssm.fit`, by group; ``seed`` seeds the fit's named random
    streams (:class:`ssm.fitting.problem.RandomStreams`). Defaults suit a head model in
    mm and scans of 0.3-2 mm sampling. Settings read as ``cfg.<group>.<name>``."""

    init: InitConfig = field(default_factory=InitConfig)
    model_fit: ModelFitConfig = field(default_factory=ModelFitConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in GROUPS:
            want = FitConfig.__dataclass_fields__[name].default_factory  # the group class
            if not isinstance(getattr(self, name), want):
                raise ConfigError(f"FitConfig {name} = {getattr(self, name)!r}: must be a {want.__name__}")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0):
            raise ConfigError(f"FitConfig seed = {self.seed!r}: must be an integer >= 0")

    def replace(self, **settings) -> "FitConfig":
        """A copy with settings changed by name (``nicp=False``, ``seed=3``, or a whole
        group: ``refine=RefineConfig(...)``); an unknown name is a :class:`ConfigError`."""
        by_group: dict[str, dict] = {}
        top = {}
        for name, value in settings.items():
            if name in GROUPS or name == "seed":
                top[name] = value
                continue
            group = _GROUP_OF.get(name)
            if group is None:
                raise ConfigError(f"FitConfig has no setting {name!r} (settings: {', '.join(sorted(_GROUP_OF))})")
            by_group.setdefault(group, {})[name] = value
        out = dataclasses.replace(self, **top)
        groups = {g: dataclasses.replace(getattr(out, g), **changes) for g, changes in by_group.items()}
        return dataclasses.replace(out, **groups)

    def settings(self) -> dict:
        """Every setting by name (flat), for reports and fit.json."""
        out = {name: getattr(getattr(self, group), name) for name, group in _GROUP_OF.items()}
        out["seed"] = self.seed
        return out

    @classmethod
    def preset(cls, name: str) -> "FitConfig":
        """``accurate`` (the defaults) or ``fast``: fewer components and iterations
        (timings and errors of both in ``docs/benchmarks.md``)."""
        if name == "accurate":
            return cls()
        if name == "fast":
            return cls().replace(component_schedule=(150, 150, 150, 150), prior_schedule=(256.0, 32.0, 4.0, 1.0),
                                 iterations_per_level=6, solve_samples=3000, scan_samples=5000,
                                 nicp_stiffness=(10.0, 3.0, 1.0))
        raise ConfigError(f"unknown preset {name!r} (use accurate or fast)")


_GROUP_OF = {f.name: group for group in GROUPS
             for f in fields(FitConfig.__dataclass_fields__[group].default_factory)}
