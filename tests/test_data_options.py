"""The typed ``data`` options (segtrain/data/options.py): built from the yaml by its _target_, validated once."""

from __future__ import annotations

import pytest

from helpers.cli import compose
from segtrain.data import DataOptions
from segtrain.errors import ConfigError


def test_the_yaml_builds_typed_options_with_no_default_copied_in_code():
    import dataclasses

    cfg = compose(["data=nifti", "data.root=/x", "data.label_mapping={255: 1}", "data.spacing=[1,1,2]"]).data
    assert cfg._target_ == "segtrain.data.options.DataOptions"
    options = DataOptions.from_config(cfg)
    assert options.label_mapping == {255: 1} and options.spacing == [1.0, 1.0, 2.0]
    assert options.plan == "auto" and options.patch_size is None and options.num_workers == "auto"
    required = [f.name for f in dataclasses.fields(DataOptions) if f.default is dataclasses.MISSING]
    assert set(required) == {f.name for f in dataclasses.fields(DataOptions)} - {"synthetic"}
    assert DataOptions.from_config(options) is options
    from hydra.utils import instantiate

    assert instantiate(cfg, _convert_="all") == options


@pytest.mark.parametrize("override, message", [
    ("data.layout=zarr", "data.layout='zarr' is unknown"),
    ("data.plan=maybe", "data.plan='maybe' is unknown; use auto"),
    ("data.patch_size=[0,16,16]", "data.patch_size=[0, 16, 16] must be a list of positive sides"),
    ("data.batch_size=0", "data.batch_size=0 must be a positive integer"),
    ("data.pos_fraction=2", "data.pos_fraction=2 must lie in [0, 1]"),
    ("data.sampling=random", "data.sampling='random' is unknown"),
    ("data.cache=ssd", "data.cache='ssd' is unknown"),
    ("data.normalize=robust", "data.normalize='robust' is unknown"),
    ("data.spacing=[1,1]", "data.spacing=[1, 1] must be null, 'median' or three positive spacings"),
    ("data.label_mapping=oops", "data.label_mapping='oops' must map label values"),
    ("data.num_workers=-1", "data.num_workers=-1 must be auto or a number"),
    ("data.plan_memory_gb=0", "data.plan_memory_gb=0 must be > 0"),
])
def test_each_bad_option_is_one_line_before_any_file_is_read(override, message):
    with pytest.raises(ConfigError) as err:
        DataOptions.from_config(compose(["data=nifti", "data.root=/does/not/exist", override]).data)
    assert message in str(err.value) and "\n" not in str(err.value)
