"""Named schedules of the model fit: which components, prior weights, iterations and
random subsets each use of :func:`ssm.fitting.model_fit.iterate.fit_model` runs with."""

from __future__ import annotations

from dataclasses import dataclass

from ssm.fitting.config import ModelFitConfig

# the start selection's quick fits match smaller subsets: it runs once per candidate start
SELECTION_SAMPLES = {"vertex_samples": 3000, "scan_samples": 4000, "solve_samples": 2000}
SELECTION_RIGID_ITERATIONS = 4
SELECTION_STIFF = ((40,), (256.0,), 5)  # components, prior weight, iterations: the large shapes only


@dataclass(frozen=True)
class Schedule:
    """One model fit's plan.

    components : (levels,) components in play at each level (clipped to the model's; 0:
        the pose alone); prior : (levels,) the prior's weight at each level.
    iterations_per_level : closest-point iterations per level.
    scan_samples, solve_samples, vertex_samples : the random subsets an iteration uses
        (see :class:`ssm.fitting.config.ModelFitConfig`).
    """

    components: tuple[int, ...]
    prior: tuple[float, ...]
    iterations_per_level: int
    scan_samples: int
    solve_samples: int
    vertex_samples: int | None

    def __post_init__(self) -> None:
        if len(self.prior) != len(self.components):
            raise ValueError(f"a schedule needs one prior weight per level: {self.prior} for {self.components}")


def _schedule(cfg: ModelFitConfig, components, prior, iterations: int, **samples) -> Schedule:
    prior = tuple(prior) if prior else (1.0,) * len(components)
    plan = {"scan_samples": cfg.scan_samples, "solve_samples": cfg.solve_samples,
            "vertex_samples": cfg.vertex_samples, **samples}
    return Schedule(tuple(components), prior, iterations, **plan)


def configured_schedule(cfg: ModelFitConfig) -> Schedule:
    """The configured levels (components, prior weights) and iterations as they are."""
    return _schedule(cfg, cfg.component_schedule, cfg.prior_schedule, cfg.iterations_per_level)


def main_schedule(cfg: ModelFitConfig, pinned: bool) -> Schedule:
    """The configured schedule with one more iteration per level when no landmarks pin
    the fit along the surface."""
    return _schedule(cfg, cfg.component_schedule, cfg.prior_schedule, cfg.iterations_per_level + (0 if pinned else 1))


def rigid_schedule(cfg: ModelFitConfig, iterations: int) -> Schedule:
    """The pose alone (no component) for ``iterations`` iterations."""
    return _schedule(cfg, (0,), None, iterations)


def selection_schedules(cfg: ModelFitConfig) -> tuple[Schedule, Schedule]:
    """The start selection's quick rigid fit and its stiff fit of the large shapes."""
    components, prior, iterations = SELECTION_STIFF
    return (_schedule(cfg, (0,), None, SELECTION_RIGID_ITERATIONS, **SELECTION_SAMPLES),
            _schedule(cfg, components, prior, iterations, **SELECTION_SAMPLES))


def augmented_schedule(cfg: ModelFitConfig, n_components: int, prior: tuple[float, ...], iterations: int) -> Schedule:
    """A refit of an augmented model: all ``n_components`` at each of the ``prior`` weights."""
    return _schedule(cfg, (n_components,) * len(prior), prior, iterations)
