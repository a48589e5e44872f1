"""FitConfig: settings in validated groups, changed by name, errors that name the setting."""

import dataclasses

import numpy as np
import pytest

from ssm.errors import SSMError
from ssm.fitting.config import ConfigError, FitConfig, ModelFitConfig, RefineConfig
from ssm.fitting.model_fit.schedule import (augmented_schedule, configured_schedule, main_schedule, rigid_schedule,
                                            selection_schedules)
from ssm.fitting.problem import STREAMS, RandomStreams


def test_replace_changes_a_setting_in_its_group_and_keeps_the_rest():
    cfg = FitConfig().replace(nicp=False, normal_cos=0.5, seed=3)
    assert cfg.refine.nicp is False and cfg.model_fit.normal_cos == 0.5 and cfg.seed == 3
    assert cfg.refine.occlusion is True and cfg.init == FitConfig().init
    assert FitConfig().refine.nicp is True  # the original is untouched (frozen)
    groups = ("init", "model_fit", "refine", "uncertainty", "smoothing")
    assert cfg.settings()["nicp"] is False
    assert len(cfg.settings()) == sum(len(dataclasses.fields(getattr(cfg, g))) for g in groups) + 1


@pytest.mark.parametrize("setting,value,words", [
    ("normal_cos", 1.5, "model_fit.normal_cos = 1.5: must be a number in [-1, 1]"),
    ("landmark_sigma_mm", 0.0, "init.landmark_sigma_mm = 0.0: must be a number > 0"),
    ("nicp_stiffness", (3.0, -1.0), "refine.nicp_stiffness = (3.0, -1.0): each level must be a number > 0"),
    ("component_schedule", (), "model_fit.component_schedule = (): must be a non-empty tuple"),
    ("smooth_iterations", -1, "smoothing.smooth_iterations = -1: must be an integer >= 0"),
    ("nicp", "yes", "refine.nicp = 'yes': must be True or False"),
    ("seed", -2, "seed = -2: must be an integer >= 0"),
    ("iterations_per_level", 2.5, "model_fit.iterations_per_level = 2.5: must be an integer >= 1"),
])
def test_a_setting_out_of_range_is_an_error_naming_it(setting, value, words):
    with pytest.raises(ConfigError) as err:
        FitConfig().replace(**{setting: value})
    assert words in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, SSMError)


def test_schedules_of_unequal_length_and_unknown_settings_are_errors():
    with pytest.raises(ConfigError, match="prior_schedule has 2 levels and component_schedule 1"):
        ModelFitConfig(component_schedule=(5,), prior_schedule=(4.0, 1.0))
    with pytest.raises(ConfigError, match="min_distance_mm = 30.0: must not exceed max_distance_mm"):
        ModelFitConfig(min_distance_mm=30.0)
    with pytest.raises(ConfigError, match="FitConfig has no setting 'nicp_stifness'"):
        FitConfig().replace(nicp_stifness=(1.0,))
    with pytest.raises(ConfigError, match="refine = .*: must be a RefineConfig"):
        FitConfig(refine=ModelFitConfig())
    assert RefineConfig(nicp_stiffness=[3.0, 1.0]).nicp_stiffness == (3.0, 1.0)  # a list means the tuple


def test_presets_and_named_schedules():
    fast = FitConfig.preset("fast")
    assert fast.model_fit.component_schedule == (150, 150, 150, 150) and fast.refine.nicp_stiffness == (10.0, 3.0, 1.0)
    assert FitConfig.preset("accurate") == FitConfig()
    with pytest.raises(SSMError, match="unknown preset 'quick'"):
        FitConfig.preset("quick")
    cfg = FitConfig().model_fit
    main, loose = main_schedule(cfg, pinned=True), main_schedule(cfg, pinned=False)
    assert main == configured_schedule(cfg) and loose.iterations_per_level == main.iterations_per_level + 1
    assert main.prior == cfg.prior_schedule and main.components == cfg.component_schedule
    rigid = rigid_schedule(cfg, 8)
    assert rigid.components == (0,) and rigid.prior == (1.0,) and rigid.iterations_per_level == 8
    quick_rigid, stiff = selection_schedules(cfg)
    assert quick_rigid.vertex_samples < cfg.vertex_samples and stiff.components == (40,)
    aug = augmented_schedule(cfg, 500, (16.0, 4.0, 1.0), 3)
    assert aug.components == (500, 500, 500) and aug.iterations_per_level == 3


def test_random_streams_are_named_and_fresh_each_time():
    streams = RandomStreams(7)
    a, b = streams.rng("nicp").random(4), streams.rng("nicp").random(4)
    np.testing.assert_array_equal(a, b)  # a stage's draws depend on the seed alone
    assert not np.array_equal(a, RandomStreams(8).rng("nicp").random(4))
    assert set(STREAMS) >= {"model_fit", "nicp", "pose_refine", "occlusion", "search"}
    with pytest.raises(KeyError):
        streams.rng("no such stream")


def test_no_two_stages_share_a_random_stream_but_the_search():
    others = {k: v for k, v in STREAMS.items() if k != "search"}
    assert len(set(others.values())) == len(others)
