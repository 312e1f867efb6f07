import pytest

from currydpo.config import help_table, load_config, resolve
from currydpo.errors import CurryError


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return str(p)


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "model:\n  path: m\nloss:\n  name: ipo\n  beta: 0.5\ncurriculum:\n  schedule: anti\n")
    cfg = load_config(path, ["loss.beta=0.25", "optim.total_updates=10", "model.ref_model=null"])
    assert (cfg.loss.name, cfg.loss.beta, cfg.optim.total_updates, cfg.curriculum.schedule) == ("ipo", 0.25, 10, "anti")
    assert cfg.model.ref_model is None
    assert resolve(cfg).reference == "initial"
    assert resolve(load_config(None, [])).reference == "previous-stage"


@pytest.mark.parametrize("text,overrides,match", [
    ("loss:\n  betta: 1\n", [], "unknown config key 'loss.betta'; valid keys in 'loss': name, beta"),
    ("losses:\n  beta: 1\n", [], "unknown config section 'losses'"),
    ("", ["loss.beta=0"], "'loss.beta' must be > 0, got 0"),
    ("", ["optim.lr=-1"], "'optim.lr' must be > 0"),
    ("", ["curriculum.stages=0"], "'curriculum.stages' must be >= 1, got 0"),
    ("", ["optim.batch_size=two"], "'optim.batch_size': expected int, got 'two'"),
    ("", ["loss.name=kto"], "unknown loss 'kto'"),
    ("", ["data.strategy=best"], "unknown pair strategy 'best'"),
    ("", ["curriculum.difficulty=vibes"], "unknown difficulty measure 'vibes'"),
    ("", ["data.max_prompt_length=600"], "must be below 'data.max_length'"),
    ("", ["curriculum.difficulty=reward-margin"], "needs 'curriculum.reward_model'"),
    ("", ["betta=1"], "section.key=value (or a TRL name"),
    ("model: [1, 2]\n", [], "section 'model' must be a mapping"),
    ("model: {path: x\n", [], "invalid YAML"),
    ("", ["model.precision=fp16"], "fp16 is not supported: fp16 training needs dynamic loss scaling"),
    ("", ["loss.label_smoothing=0.1"], "loss.label_smoothing=0.1 is only used by the losses cdpo, robust, exo"),
    ("", ["loss.name=dpo,sft", "loss.weights=1"], "'loss.weights' has 1 weights for 2 losses"),
    ("", ["loss.name=dpo,dpo"], "lists a loss twice"),
    ("", ["data.select=best"], "'data.select': 'best' is not valid; choose one of: none, ref-margin"),
    ("", ["data.select_fraction=0"], "'data.select_fraction' must be in (0, 1]"),
    ("", ["loss.name=plackett-luce", "loss.wpo=true"], "a listwise loss takes whole lists"),
    ("", ["loss.name=lipo", "curriculum.schedule=self-paced"], "with a listwise loss use iterative"),
    ("", ["loss.name=pro,dpo"], "mix listwise and pairwise"),
    ("loss:\n  name: [dpo, kto]\n", [], "unknown loss 'kto'"),
    ("", ["loss.weights=a,b", "loss.name=dpo,sft"], "'loss.weights': expected float, got 'a'"),
])
def test_bad_configs_name_the_key(tmp_path, text, overrides, match):
    with pytest.raises(CurryError, match=match.replace("(", r"\(").replace("[", r"\[")):
        load_config(write(tmp_path, text), overrides)


def test_missing_config_file():
    with pytest.raises(CurryError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_help_table_lists_every_key():
    table = help_table()
    for key in ("model.path", "loss.beta", "curriculum.schedule", "optim.total_updates", "run.seed"):
        assert f"`{key}`" in table


def test_loss_list_from_yaml_and_set(tmp_path):
    path = write(tmp_path, "loss:\n  name: [dpo, bco-pair, sft]\n  weights: [0.8, 0.2, 1]\n")
    cfg = load_config(path)
    assert cfg.loss.name == ["dpo", "bco-pair", "sft"] and cfg.loss.weights == [0.8, 0.2, 1.0]
    cfg = load_config(None, ["loss.name=dpo,sft", "loss.weights=0.5,1"])
    assert cfg.loss.name == ["dpo", "sft"] and cfg.loss.weights == [0.5, 1.0]
    assert load_config(None, ["loss.name=ipo"]).loss.name == "ipo"


def test_iterative_defaults_follow_the_paper_and_other_schedules_keep_theirs():
    from currydpo.config import from_dict, resolve, validate

    def cfg(**c):
        return validate(from_dict({"curriculum": c}))

    # Curry-DPO trains each stage as a standard DPO run: restart the optimiser, shuffle the stage
    assert (resolve(cfg()).across_stages, resolve(cfg()).shuffle_within_stage) == ("restart", True)
    for schedule in ("single-pass", "anti", "cyclical"):
        r = resolve(cfg(schedule=schedule))
        assert (r.across_stages, r.shuffle_within_stage) == ("continue", False)
    # explicit values win, YAML booleans included
    fixed = validate(from_dict({"curriculum": {"shuffle_within_stage": False}, "optim": {"across_stages": "continue"}}))
    assert (resolve(fixed).across_stages, resolve(fixed).shuffle_within_stage) == ("continue", False)
    assert resolve(cfg(schedule="single-pass", shuffle_within_stage=True)).shuffle_within_stage is True
    with pytest.raises(CurryError, match="curriculum.shuffle_within_stage"):
        cfg(shuffle_within_stage="sometimes")
    with pytest.raises(CurryError, match="data.sample_prompts"):
        validate(from_dict({"data": {"sample_prompts": 0}}))


def test_sample_prompts_is_a_seeded_subset(tmp_path):
    from currydpo.config import from_dict, validate
    from currydpo.pipeline import prepare

    from conftest import make_records

    recs = make_records(30)

    def ids(seed, n=10):
        c = validate(from_dict({"data": {"sample_prompts": n}, "run": {"seed": seed}}))
        return [r.id for r in prepare(c, records=list(recs)).records]

    assert len(ids(1)) == 10 and ids(1) == ids(1) and ids(1) != ids(2)
    assert ids(1) == sorted(ids(1), key=int)  # file order kept
    assert len(ids(1, n=100)) == 30  # more than there are: all


ON = ["online.enabled=true", "online.judge=gold:m:f"]


@pytest.mark.parametrize("overrides,match", [
    (["online.enabled=true"], "'online.judge': None is not a judge spec"),
    (["online.enabled=true", "online.judge=gpt4"], "'online.judge': 'gpt4' is not a judge spec"),
    ([*ON, "online.samples=1"], "'online.samples' must be >= 2"),
    ([*ON, "online.mix=1.5"], "'online.mix' must be in [0, 1], got 1.5"),
    ([*ON, "online.temperature=0"], "'online.temperature' must be > 0"),
    ([*ON, "online.from_stage=4"], "'online.from_stage' (4) must be a stage of the schedule (1..3"),
    ([*ON, "curriculum.schedule=single-pass"], "(1..1 for single-pass with 1 stage(s))"),
    ([*ON, "curriculum.reference=initial"], "set curriculum.reference previous-stage"),
    (["generation.engine=tgi"], "'generation.engine': 'tgi' is not valid; choose one of: hf, vllm"),
    (["generation.engine=vllm", "model.lora=true"], "vllm does not load LoRA stage adapters"),
    (["generation.top_p=0"], "'generation.top_p' must be in (0, 1]"),
])
def test_online_and_generation_keys_are_validated(tmp_path, overrides, match):
    with pytest.raises(CurryError, match=match.replace("(", r"\(").replace("[", r"\[").replace(")", r"\)")
                       .replace("]", r"\]")):
        load_config(None, overrides)


def test_online_config_accepts_the_documented_forms():
    cfg = load_config(None, [*ON, "online.mix=0.25", "online.from_stage=1", "online.prompts=p.jsonl"])
    assert (cfg.online.mix, cfg.online.from_stage, cfg.generation.engine) == (0.25, 1, "hf")
    simpo = load_config(None, [*ON, "curriculum.reference=initial", "loss.name=simpo"])  # reference-free: fine
    assert simpo.online.enabled
