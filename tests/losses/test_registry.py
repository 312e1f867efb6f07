"""The registry is the one copy of each loss option: config's fields and checks come from it."""

import dataclasses
import re

import pytest
import torch

from currydpo.config import LossConfig, load_config
from currydpo.errors import CurryError
from currydpo.losses import LOSSES, OPTIONS, PairLogps, check_section
from currydpo.losses.pairwise import REFERENCE_FREE


def test_every_option_is_a_loss_config_field_with_the_registry_default_and_help():
    fields = {f.name: f for f in dataclasses.fields(LossConfig)}
    for name, option in OPTIONS.items():
        assert name == option.name and name in fields, name
        assert fields[name].default == option.default and type(fields[name].default) is type(option.default), name
        assert fields[name].metadata["help"] == option.help, name
    # the other fields are the section's own (not per-loss options), so no option hides outside OPTIONS
    assert set(fields) - set(OPTIONS) == {"name", "beta", "weights", "wpo", "rpo_alpha"}
    assert LossConfig().options() == {k: o.default for k, o in OPTIONS.items()}
    assert {o for spec in LOSSES.values() for o in spec.options} == set(OPTIONS)  # each option taken by some loss


@pytest.mark.parametrize("name", [n for n, o in OPTIONS.items() if o.ok is not None])
def test_check_section_rejects_an_option_out_of_range_naming_the_key(name):
    user = next(n for n, spec in LOSSES.items() if name in spec.options)
    bad = LossConfig(name=user, **{name: -1.0})
    message = f"config key 'loss.{name}' must be {OPTIONS[name].within}, got -1.0"
    with pytest.raises(CurryError, match=f"^{re.escape(message)}$"):
        check_section(bad)
    check_section(LossConfig(name=user))  # the default is in range
    with pytest.raises(CurryError, match=rf"'loss\.{name}' must be"):  # and config.validate asks the registry
        load_config(None, [f"loss.name={user}", f"loss.{name}=-1"])


@pytest.mark.parametrize("section, key, message", [
    ({"beta": 0.0}, "beta", "must be > 0, got 0.0"),
    ({"rpo_alpha": -0.5}, "rpo_alpha", "must be >= 0, got -0.5"),
    ({"name": "pro", "wpo": True}, "wpo", "a listwise loss takes whole lists"),
    ({"name": ["dpo", "sft"], "weights": [1.0]}, "weights", "has 1 weights for 2 losses"),
])
def test_check_section_names_the_key_of_the_section_fields(section, key, message):
    with pytest.raises(CurryError, match=rf"'loss\.{key}'.*{message}"):
        check_section(LossConfig(**section))


def test_the_missing_reference_error_lists_the_reference_free_pair_losses():
    free = [n for n, spec in LOSSES.items() if not spec.reference and not spec.listwise]
    assert REFERENCE_FREE == ", ".join(free)
    x = PairLogps(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(CurryError, match=re.escape(f"or use a reference-free loss ({REFERENCE_FREE})")):
        LOSSES["dpo"].fn(x, beta=0.1)
