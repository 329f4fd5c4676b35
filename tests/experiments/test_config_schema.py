"""The declared config schema: every key of every built-in experiment is declared with its type, range and meaning;
bad values are refused at config time with a one-line ConfigError naming the key and what is allowed."""

from __future__ import annotations

import pytest

from samkit.experiments import (
    BUILTIN,
    PRESETS,
    ConfigError,
    Experiment,
    Param,
    Unit,
    describe,
    get,
    register,
)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_key_of_every_preset_is_declared_and_every_preset_validates(name):
    exp = get(name)
    assert exp.schema, f"{name} declares no schema"
    for preset in PRESETS:
        assert set(exp.schema) == set(exp.presets[preset]), preset
        assert exp.config(preset) == exp.presets[preset]  # validates, and changes nothing
    for key, param in exp.schema.items():
        assert param.help and "\n" not in param.help, key
    table = describe(exp)
    lines = table.splitlines()
    assert lines[0].startswith(f"{name} — ") and lines[1].split()[:5] == ["key", "type", "tiny", "quick", "full"]
    assert [line.split()[0] for line in lines[2 : 2 + len(exp.schema)]] == list(exp.schema)


#: (experiment, overrides, text the one-line error must contain): each would crash deep in a run or give nonsense.
BAD = [
    ("E1", "steps=0", "steps must be an integer >= 1, got 0"),
    ("E1", "steps=-5", "steps must be an integer >= 1, got -5"),
    ("E1", "rhos=0.1,-1", "rhos[1] must be a positive finite number, got -1.0"),
    ("E1", "r=20", "r must be <= d (= 12), got 20"),
    ("E1", "converge_factor=0", "converge_factor must be a number in (0, 1], got 0.0"),
    ("E2", "polish_steps=0", "polish_steps must be an integer >= 1, got 0"),
    ("E2", "m=0", "m must be an integer >= 1, got 0"),
    ("E2", "sam_rhos=0", "sam_rhos[0] must be a positive finite number, got 0.0"),
    ("E3", "steps=0", "steps must be an integer >= 1, got 0"),
    ("E3", "n_eta=0", "n_eta must be an integer >= 1, got 0"),
    ("E3", "rho_min=-1", "rho_min must be a positive finite number, got -1.0"),
    ("E3", "rho_min=20", "rho_min must be < rho_max (= 10.0), got 20.0"),
    ("E3", "eta_min=0.5", "eta_min must be < eta_max (= 0.3), got 0.5"),
    ("E3", "x0=1,2,3", "x0 must hold 2 values (as many as eigenvalues), got 3"),
    ("E3", "sc_c=1", "sc_c must be < 1, got 1.0"),
    ("E3", "cycle_etas=0.1,0.25", "cycle_etas must be < 2/β = 0.2"),
    ("E3", "eigenvalues=10,10", "the largest eigenvalue must be simple"),
    ("E3", "eigenvalues=10 x0=1", "eigenvalues must hold at least 2 values"),
    ("E4", "x0=1,2,3", "x0 must hold 2 values, got 3"),
    ("E4", "ratio_min=20", "ratio_min must be < ratio_max (= 10.0), got 20.0"),
    ("E4", "n_ratio=0", "n_ratio must be an integer >= 1, got 0"),
    ("E5", "loss=square", "loss must be one of logcosh, sqrt, got 'square'"),
    ("E5", "x0=3,1", "must have |y0| > |x0|"),
    ("E5", "drift_factor=-1", "drift_factor must be a finite number >= 0, got -1.0"),
    ("E6", "m=5", "m must be < M (= 4.0), got 5.0"),
    ("E6", "x0=2,1", "must have |x0| <= x_max (= 1.0)"),
    ("E7", "epochs=0", "epochs must be an integer >= 1, got 0"),
    ("E7", "dataset=mnist", "dataset must be one of fashion-mnist, cifar10, synthetic, got 'mnist'"),
    ("E7", "momentum=1", "momentum must be < 1, got 1.0"),
    ("E7", "seeds=0,-1", "seeds[1] must be an integer >= 0, got -1"),
    ("E7", "rho_min=20", "rho_min must be < rho_max (= 10.0), got 20.0"),
]


@pytest.mark.parametrize(("name", "override", "message"), BAD, ids=[f"{n}-{o}" for n, o, _ in BAD])
def test_bad_values_are_one_line_config_errors_naming_the_key(name, override, message):
    with pytest.raises(ConfigError) as err:
        get(name).config("tiny", override.split())
    text = str(err.value)
    assert text.startswith(f"{name}: ") and message in text and "\n" not in text, text


@pytest.mark.parametrize("name", ["E1", "E3", "E5"])
@pytest.mark.parametrize("override", ["steps=1.5", "steps=abc", "steps=true"])
def test_wrong_types_are_refused_by_the_parser(name, override):
    with pytest.raises(ConfigError, match=f"^{name}: steps: expected an integer, got '"):
        get(name).config("tiny", [override])


def test_a_config_read_back_is_checked_as_well():
    # what `samkit run` gets from a hand-edited or stale config file goes through the same checks
    e3 = get("E3")
    cfg = dict(e3.presets["tiny"], steps=True)
    with pytest.raises(ConfigError, match=r"^E3: steps must be an integer >= 1, got True$"):
        e3.check_config(cfg)
    with pytest.raises(ConfigError, match=r"config keys not in the schema: \['stesp'\]; schema keys missing: \[\]"):
        e3.check_config({**e3.presets["tiny"], "stesp": 3})


def test_param_checks_and_describes_its_range():
    assert Param(float, "x", min=0, strict=True).allowed() == "> 0"
    assert Param(float, "x", min=0, max=1).allowed() == "[0, 1]"
    assert Param(float, "x", min=0, below=1).allowed() == "[0, 1)"
    assert Param(float, "x", min=0, strict=True, below="hi").allowed() == "(0, hi)"
    assert Param(float, "x", max=2).allowed() == "<= 2"
    assert Param(float, "x").allowed() == "any finite number"
    assert Param(bool, "x").allowed() == "true or false"
    assert Param(str, "x", choices=("a", "b")).allowed() == "a | b"
    assert Param(list[int], "x", min=1).allowed() == "list of integers each >= 1"
    assert Param(list[float], "x", length=2).allowed() == "list of numbers; 2 values"
    assert Param(int, "x", min=1, max="d").allowed() == "[1, d]"
    assert Param(int, "x", min=1, max="d").check("r", 3, {"d": 3}) == 3
    with pytest.raises(ConfigError, match=r"r must be <= d \(= 3\), got 4"):
        Param(int, "x", min=1, max="d").check("r", 4, {"d": 3})
    # an integer with a strict lower bound: > 0 means >= 1
    with pytest.raises(ConfigError, match="k must be an integer >= 1, got 0"):
        Param(int, "x", min=0, strict=True).check("k", 0, {})
    assert Param(int, "x", min=0, strict=True).check("k", 1, {}) == 1
    with pytest.raises(ConfigError, match="flag must be true or false, got 1"):
        Param(bool, "x").check("flag", 1, {})
    with pytest.raises(ConfigError, match="name must be a string, got 3"):
        Param(str, "x").check("name", 3, {})
    with pytest.raises(ConfigError, match=r"xs must be a non-empty list of float, got \[\]"):
        Param(list[float], "x").check("xs", [], {})
    with pytest.raises(ConfigError, match="xs must be a non-empty list of float, got 0.5"):
        Param(list[float], "x").check("xs", 0.5, {})
    with pytest.raises(ConfigError, match="x must be a finite number, got nan"):
        Param(float, "x").check("x", float("nan"), {})
    with pytest.raises(ConfigError, match="lo must be < hi"):
        Param(float, "x", below="hi").check("lo", 1.0, {"hi": 1.0})  # equal is not below


class _Plain(Experiment):
    name = "PLAIN"
    title = "No schema"
    presets = {p: {"seed": 0, "n": 2} for p in PRESETS}

    def units(self, config):
        return [Unit("u", {"n": config["n"]})]


def test_an_experiment_without_a_schema_is_type_checked_only():
    # tolerated for experiments registered from outside (the built-ins all declare one, see the first test)
    register(_Plain)
    exp = get("PLAIN")
    assert exp.config("tiny", ["n=-3"])["n"] == -3
    with pytest.raises(ConfigError, match="n: expected an integer"):
        exp.config("tiny", ["n=x"])
    assert "(not declared)" in describe(exp)


def test_registration_refuses_a_partial_schema_and_a_bad_preset():
    class Partial(_Plain):
        name = "PARTIAL"
        schema = {"seed": Param(int, "seed", min=0)}

    with pytest.raises(ConfigError, match=r"PARTIAL: config keys not in the schema: \['n'\]"):
        register(Partial)

    class BadPreset(_Plain):
        name = "BADPRESET"
        schema = {"seed": Param(int, "seed", min=0), "n": Param(int, "n", min=5)}

    with pytest.raises(ConfigError, match="BADPRESET: n must be an integer >= 5, got 2"):
        register(BadPreset)
