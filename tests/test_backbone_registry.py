"""The backbone registry: the family modules are the one list of names, and every listed name builds its config
(the module object only: no weights, no forward)."""

from __future__ import annotations

import ast
import subprocess
import sys

import flax.linen as nn
import pytest

from jaxheads import backbones


@pytest.mark.slow
def test_every_listed_name_has_a_config_that_builds():
    names = backbones.list_backbones()
    assert {"efficientnet_lite0", "vgg16", "mobilenet_v2", "resnet50", "efficientnet_b7"} <= set(names)
    assert len(names) == len(set(names))
    for name in names:
        config = backbones.get_config(name)
        assert config.name == name
        assert isinstance(config.build(num_classes=0), nn.Module), name
        assert config.feature_channels > 0 and config.preprocessing.input_size >= 16, name
        assert config.default_weights is None or config.default_weights in config.weights, name


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown backbone 'no_such_net'; known: .*efficientnet_lite0"):
        backbones.get_config("no_such_net")


@pytest.mark.slow
def test_asking_for_the_default_imports_no_other_family():
    code = ("import sys; from jaxheads import backbones; backbones.get_config('efficientnet_lite0'); "
            "print(sorted(m for m in sys.modules if m.startswith('jaxheads.backbones.') and m.count('.') == 2))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = set(ast.literal_eval(out))
    assert "jaxheads.backbones.efficientnet_lite" in loaded
    assert not loaded & {"jaxheads.backbones.vgg", "jaxheads.backbones.resnet", "jaxheads.backbones.mobilenet",
                         "jaxheads.backbones.efficientnet"}, loaded
