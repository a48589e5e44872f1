"""Settings and schedules of the fitting stages (all lengths in model units, mm)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FitConfig:
    """Defaults suit a head model in mm and scans of 0.3-2 mm sampling.

    Landmarks
      landmark_sigma_mm : assumed landmark noise when the file gives none.
      ransac_threshold_mm, ransac_iterations : robust landmark similarity.
    Automatic initialisation
      auto_points : scan points used by the search; auto_icp_iterations per hypothesis;
        auto_candidates : distinct hypotheses a short model fit chooses between (and
        ``init_auto.EXTRA_CANDIDATES`` more when none of them explains the scan well).
    Rigid refinement
      rigid_iterations : similarity-only iterations before the model fit (the model fit
        solves the pose again, jointly with the shape); twice as many after the automatic
        search, whose start is rougher than a landmark one.
    Correspondences
      max_distance_mm : initial gate; later gates adapt to the residuals (k sigma) but
        never go below ``min_distance_mm``.
      normal_cos : minimum cosine between model and scan normals.
      scan_samples : scan points used for scan->model matches each iteration (the model
        fit's last iteration and NICP's softest level use them all, up to
        ``ssm.fitting.model_fit.EXACT_SCAN_POINTS``).
    Model fit
      component_schedule : numbers of components per level (clipped to K); the stiff
        early levels need only the large components, which makes their solves cheap.
      prior_schedule : multiplier of the prior's weight at each level, stiff to soft
        (annealing); relaxing the prior, rather than only adding components, escapes the
        sliding local minima of a plain few-components-first schedule.
      iterations_per_level : iterations at each schedule level (one more without
        landmarks, when nothing else holds the fit from sliding along the surface).
      solve_samples : correspondences used per coefficient solve (a fresh random subset
        each iteration; the cost of a solve grows with samples x K^2). The last iteration
        of the last level uses them all.
      vertex_samples : model vertices matched per model-fit iteration (a fresh random
        subset, landmarks always in); None matches all. The last iteration matches all.
      point_to_plane : weight of the normal (vs full 3D) residual, in [0, 1] (landmarks
        and points without normals always count in 3D). 1 (the default) lets the model
        slide along the scan to where its shape fits: a closest point pins a vertex where
        the current, wrong fit put it. On held-out ICT scans 1 instead of 0.7 takes the
        neutral cases from 0.54 / 0.64 / 0.70 mm to 0.45 / 0.55 / 0.56 mm (68 landmarks,
        7, none) and the expression cases from 1.15 / 1.42 / 1.46 to 1.01 / 1.19 / 1.24
        mm (an expression is sliding along the skin: brows raised, a smile).
      overrelaxation : each solve's step on the coefficients is scaled by this (1 = plain
        alternation); closest-point iterations converge linearly, and 1.6 reaches a given
        error in fewer iterations (benchmarks/bench_fitting.py). The last iteration takes
        the plain solve: the fit is the MAP estimate for its correspondences.
    Occlusion (:mod:`ssm.fitting.occlusion`)
      occlusion : find where the scan lies well outside the fitted skin over a region
        (hair, a cap) and refit the model without those vertices; NICP leaves them out.
    Landmark warp (with at least 20 landmarks; :mod:`ssm.fitting.landmark_warp`)
      landmark_warp : correct the model fit where the landmarks agree that it is off
        (an expression an identity model does not span); warp_region_mm : a warp larger
        than this marks the region where the model is refitted with a smooth deformation
        field, and where NICP keeps the landmarks at its soft levels;
        warp_basis_length_mm : the field's correlation length along the model's surface
        (its heat kernel), in the landmark warp's refit and in the expression field's
        (whose probe keeps the 50 mm its gate was measured with). 30 mm rather than 50:
        the benchmark's expression 1.01 / 1.19 / 1.23 -> 0.96 / 1.12 / 1.13 mm (68 / 7 /
        no landmarks, 4 subjects), four other expressions (smile and cheeks; one-sided
        smile, squint and brow; open jaw, pucker, puffed cheeks; frown, sneer and brows
        down; 2 subjects each) 1.03 / 1.26 / 1.42 -> 0.96 / 1.14 / 1.31 mm, faces with
        3 mm of detail outside the model 1.07 / 1.85 / 1.75 -> 1.07 / 1.45 / 1.69 mm
        (1.07 / 1.37 / 1.37 with ``expression_field_mm=0``);
        25 mm is no better. Shorter lengths need more manifold harmonics: a one-off
        eigensolve per model of about 4 s at 30 mm (1 s at 50) on a 2-core machine;
        warp_basis_taper_mm : how far outside the region it fades (Gaussian).
        warp_amplitude_scale : the field's amplitude in the warp's refit is the landmark
        GP's amplitude (at least 1 mm) times this. With the identity's looser prior
        (``field_identity_sd``) a freer field pays: with 68 landmarks the benchmark's
        expression 0.838 -> 0.821 mm, another draw of the landmarks' noise 0.909 ->
        0.901, four other expressions 0.891 -> 0.877 mm (the smile with cheeks 0.891 ->
        0.844, the one-sided smile 0.816 -> 0.784, the frown 0.931 -> 0.923; the open jaw
        with a pucker 0.926 -> 0.957); 1.7 gave 0.831 / 0.914 / 0.869, 2 gave 0.830 on the
        benchmark's, 0.7 0.896. (Before the looser prior, 1.6 was no better than 1.)
        warp_basis_smoothness : in the landmark warp's refit (20 landmarks or more), the
        field's kernel is the Matern-like one of this smoothness ``nu``
        (:func:`ssm.fitting.deformation_basis.heat_kernel_fields`), rougher than the heat
        kernel: the landmarks are dense enough to pin sharper changes (the lips' edges,
        the folds beside the nose). With 68 landmarks the benchmark's expression 0.909
        -> 0.890 mm (4 subjects; with another draw of the landmarks' noise 1.007 -> 0.981),
        four other expressions 0.938 -> 0.924 mm (2 subjects each; 3 better, one 0.004
        worse); nu = 3 gave 0.895. With 7 landmarks or none (the expression field over the
        whole model) it was worse (7: 1.061 -> 1.079 mm), and that field keeps the heat
        kernel. None: the heat kernel here too.
      warp_landmark_sigma_scale : in the landmark warp's refit the landmarks' sigma
        (``landmark_sigma_mm`` or the file's) is taken this many times larger: the
        field's hundreds of local components follow each landmark's noise along the
        skin, which the identity's global components average out, and the surface does
        not see. With 68 landmarks (sigma 1.5 mm) the benchmark's expression 0.871 ->
        0.854 mm (another draw of the noise 0.954 -> 0.915), four other expressions
        0.924 -> 0.921 (two better, one the same, one 0.017 worse); 2 gave 0.860. It
        does not touch the expression field's refit (fewer than 20 landmarks), where 7
        landmarks were worse both ways (sigma 1 or 3: 1.083 / 1.077 against 1.061 mm).
      field_identity_sd : in every refit with a deformation field (the landmark warp's
        and the expression field's), the identity's prior is loosened by this factor in
        its standard deviations (:func:`ssm.fitting.deformation_basis.augmented_model`):
        the identity from the first model fit is already bent by what it does not span,
        and at its full prior it keeps much of that bend, which the field then has to
        undo; looser, it finds the identity the field leaves it. On the benchmark's
        expression 0.854 / 1.060 / 1.088 -> 0.838 / 1.051 / 1.096 mm (68 / 7 / none),
        another draw of the 68 landmarks' noise 0.915 -> 0.909, four other expressions
        0.921 -> 0.891 mm (68) and 1.129 -> 1.075 mm (7), faces with 3 mm of detail
        outside the model (``benchmarks/bench_fitting_robustness.py``, 3 subjects) 1.08 /
        1.45 / 1.69 -> 1.08 / 1.22 / 1.34 mm; 1.5 gave 0.835 / 1.067 and 3 gave 0.862 /
        1.066 / 1.106 on the benchmark's expression. The probe of the expression field
        keeps 1 (its gate was measured so); an expression model's fit too.
      mirror_field : when the field the refit found is mostly symmetric about the model's
        mirror plane (:mod:`ssm.geometry.mirror`; a smile on both sides, not a one-sided
        one), fit it again with its two sides correlated by that much
        (:func:`ssm.fitting.deformation_basis.mirror_correlation`): the benchmark's
        expression 0.96 / 1.12 / 1.13 -> 0.91 / 1.06 / 1.09 mm (68 / 7 / none); False
        keeps the field as it was.
    Expression field (:mod:`ssm.fitting.expression_field`)
      expression_field_mm : when the landmark warp does not apply (fewer than 20
        landmarks, none, or landmarks that disagree with the fit over more than 45 % of
        the model; with 20+ that agree, the warp decides), probe with a smooth
        deformation field of this amplitude over the whole model; 0 leaves it out. The
        refit's field has this amplitude times ``(probe RMS / 1.1 mm)^2``, at least once
        (:data:`ssm.fitting.expression_field.AMPLITUDE_REFERENCE_MM`).
      expression_field_gate_mm : refit the model with the field when the probe's field
        has a larger RMS over the vertices than this (neutral ICT scans 0.37-0.93 mm
        over bench_fitting's cases and all the robustness benchmark's views, clouds,
        hair, busts and bodies since the model fit's exact last iteration, 0.27-1.03 mm
        before; expressions 1.07-2.2 mm, at 1 mm amplitude; faces with much detail
        outside the model reach 1.2-1.4 mm: see :mod:`ssm.fitting.expression_field`); 0
        always refits (a scan known to show an expression). It was 1.1 mm: a one-sided
        smile with a squint probed at 1.07 on one subject and kept the identity-only
        fit, 1.49 mm from the truth against 0.79 with the field.
    Expression model (:mod:`ssm.fitting.expression_model`; a model file with an
    expression basis, given to :func:`ssm.fit` as ``expression_model``)
      expression_model_gate_mm : fit the expression when a quick probe's expression
        displacement has a larger RMS over the vertices than this (a Basel-style ICT
        model: neutral held-out faces 0.33-1.16 mm, mild expressions 1.5-2.0 mm); 0
        always fits it (a scan known to show one). With an expression model the landmark
        warp and the generic expression field stand aside.
    Non-rigid ICP
      nicp_stiffness : membrane stiffness per stage, stiff to soft (relative to the
        mean data weight); the landmarks weigh against the surface by their variance
        over the correspondences', as in the model fit (they weighed as much as
        ``landmark_boost`` surface points whatever their noise, which with 68 landmarks
        of sigma 1.5 mm pulled the expression fits' skin after the noise: 0.890 -> 0.871
        mm, another draw 0.981 -> 0.954; neutral 0.419 / 0.478 -> 0.414 / 0.475 mm with
        68 / 7); nicp_iterations per stage; nicp_model_weight: pull towards
        the model fit; nicp_point_to_plane: 1 pulls only along the normal (no
        sliding along the surface), 0 to the closest point; nicp = False skips the stage.
    Uncertainty
      uncertainty_correlation : correspondences per independent observation in the
        posterior (neighbouring scan points share their errors); calibrated on held-out
        ICT cases: six cases (seeds 30-35) have 97.8 % of face vertices within 2 sigma
        and 73 % within 1 (a Gaussian error of that RMS: 99 % and 61 %; 20 gave 95 % and
        64 %, but the expression cases then fell under 85 % within 2 sigma). It was 150
        while the residual planes were the scan's normals, whose noisy tilts added
        tangential information the fit did not have; with the model's normals 150 put
        99.9 % within 2 sigma. Since the model fit's exact last iteration (more accurate
        fits, the same posterior) 30 put 99.3 % of the three test cases' face vertices
        (seeds 30-32) within 2 sigma; 15 puts 98.2 %, the 68-landmark expression 90 % and
        the 7-landmark one 79 % (20: 98.9 %, 93 %, 82 %; the expression field's own
        uncertainty is not in the posterior).
    Smoothing
      smooth_iterations : Taubin iterations applied where the fit is uncertain (0: off).
    """

    landmark_sigma_mm: float = 2.0
    ransac_threshold_mm: float = 12.0
    ransac_iterations: int = 300
    auto_points: int = 1500
    auto_icp_iterations: int = 12
    auto_candidates: int = 3
    rigid_iterations: int = 4
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
    uncertainty_correlation: float = 15.0
    smooth_iterations: int = 3
    seed: int = 0

    @classmethod
    def preset(cls, name: str) -> "FitConfig":
        """``accurate`` (the defaults) or ``fast``: fewer components and iterations, about
        1.3x faster with landmarks for up to 0.04 mm, within 0.06 mm either way without (see
        benchmarks/bench_fitting.py)."""
        if name == "accurate":
            return cls()
        if name == "fast":
            return cls(component_schedule=(150, 150, 150, 150), prior_schedule=(256.0, 32.0, 4.0, 1.0),
                       iterations_per_level=6, solve_samples=3000, scan_samples=5000,
                       nicp_stiffness=(10.0, 3.0, 1.0))
        from ssm.errors import SSMError

        raise SSMError(f"unknown preset {name!r} (use accurate or fast)")
