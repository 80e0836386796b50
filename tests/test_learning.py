"""What the run learns: absorbed bits (checked against a float64 recomputation from full logits), the
per-prompt ledger, signal exhaustion and informative sampling, in real TRL runs on the tiny model."""

from __future__ import annotations

import math
import random
import warnings

import pytest
from helpers import RecordingReward, grpo_trainer, latest_logged

from lora_rl_plugins.learning.ledger import PromptLedger, classify_group, prompt_key
from lora_rl_plugins.learning.sampling import InformativeSelector


def test_batch_prompt_keys_hash_each_run_of_equal_prompts_once_and_equal_prompt_key() -> None:
    from lora_rl_plugins.bridge.translate import rollouts_scored
    from lora_rl_plugins.plugin.collective import SingleProcess

    chat = [{"role": "user", "content": "hi"}]
    prompts = ["3=", "3=", "4=", "4=", chat, [dict(m) for m in chat], "3=", "3=", ("t",), ("t",)]
    batch = rollouts_scored(
        SingleProcess(),
        step=1,
        rewards=[[1.0]] * 10,
        reward_names=["r"],
        reward_weights=[1.0],
        group_size=2,
        prompts=prompts,
    )
    assert batch.prompt_keys == [prompt_key(p) for p in prompts]


def test_classify_group_and_prompt_key() -> None:
    assert classify_group([1, 0, 1], 1, 0) == "informative"
    assert classify_group([1, 1, 1], 1, 0) == "solved"
    assert classify_group([0, 0, float("nan")], 1, 0) == "unsolved"
    assert classify_group([0.5, 0.5], 1, 0) == "constant"
    assert classify_group([1, float("nan")], 1, 0) == "unscored"
    assert prompt_key("3=") == prompt_key("3=") != prompt_key("4=")
    assert prompt_key([{"role": "user", "content": "hi"}]) == prompt_key([{"content": "hi", "role": "user"}])


def test_ledger_evicts_least_recent_and_round_trips() -> None:
    ledger = PromptLedger(max_prompts=2)
    assert not ledger.visit("a", outcome="solved", reward_mean=1.0, bits=0.0, step=1, prompt="a?")
    assert not ledger.visit("b", outcome="informative", reward_mean=0.5, bits=4.0, step=1)
    ledger.visit("a", outcome="solved", reward_mean=1.0, bits=0.0, step=2)  # a is now the most recent
    assert ledger.visit("c", outcome="unsolved", reward_mean=0.0, bits=0.0, step=3)  # evicts b
    assert ledger.get("b") is None and ledger.get("a").zero_streak == 2 and ledger.get("a").visits == 2
    assert ledger.fractions() == {"solved": 0.5, "unsolved": 0.5, "informative": 0.0}
    copy = PromptLedger(max_prompts=2)
    copy.set_state(ledger.get_state())
    assert copy.get_state() == ledger.get_state()
    assert [k for k, _ in ledger.taught_nothing()] == ["a", "c"]
    with pytest.raises(ValueError, match="max_prompts"):
        PromptLedger(0)


def test_selector_skips_revisits_and_is_deterministic() -> None:
    ledger = PromptLedger()
    for key in ("0", "1", "2"):
        for _ in range(2):
            ledger.visit(key, outcome="solved", reward_mean=1.0, bits=0.0, step=1)
    draws = []
    for _ in range(2):
        selector = InformativeSelector(ledger, str, 10, skip_after=2, revisit=0.0, seed=3)
        cursor = {"epoch": 0, "position": 0}
        draws.append([selector.draw(4, cursor) for _ in range(5)])
        assert selector.skipped > 0
    assert draws[0] == draws[1]  # the same on every process
    assert all(len(chunk) == 4 for chunk in draws[0])  # batches stay full
    assert not {0, 1, 2} & {i for chunk in draws[0] for i in chunk}
    every = InformativeSelector(ledger, str, 3, skip_after=2, revisit=0.0)  # nothing informative left: still full
    assert len(every.draw(3, {"epoch": 0, "position": 0})) == 3
    revisiting = InformativeSelector(ledger, str, 10, skip_after=2, revisit=1.0)
    assert revisiting.draw(10, {"epoch": 0, "position": 0}) and revisiting.skipped == 0
    with pytest.raises(ValueError, match="revisit"):
        InformativeSelector(ledger, str, 10, revisit=2.0)


def test_token_log_probs_match_a_float64_recomputation() -> None:
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model

    from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer
    from lora_rl_plugins.learning.probes import measure_probes, probe_batch

    tokenizer = build_tokenizer()
    model = get_peft_model(build_tiny_model(), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    prompts, answers = ["3=", "12+"], ["7", "45"]
    result = measure_probes(model, tokenizer, prompts, answers, temperature=0.7)
    ids, mask, answer_mask = probe_batch(tokenizer, prompts, answers)
    with torch.no_grad():
        expected = []
        for disabled in (False, True):
            if disabled:
                with model.disable_adapter():
                    logits = model(input_ids=ids, attention_mask=mask).logits
            else:
                logits = model(input_ids=ids, attention_mask=mask).logits
            logp = torch.log_softmax(logits.double() / 0.7, dim=-1)
            c = answer_mask.shape[1]
            token = logp[:, -c - 1 : -1].gather(-1, ids[:, -c:].unsqueeze(-1)).squeeze(-1)
            expected.append((token * answer_mask).sum(-1) / math.log(2))
    assert result.policy_log2 == pytest.approx(expected[0].tolist(), abs=1e-4)
    assert result.reference_log2 == pytest.approx(expected[1].tolist(), abs=1e-4)
    assert result.absorbed_bits <= result.answer_bits
    assert result.answer_bits - result.absorbed_bits == pytest.approx(result.remaining_bits)


@pytest.mark.slow
def test_trl_run_reports_absorbed_bits_and_a_resumable_ledger(tmp_path) -> None:
    pytest.importorskip("trl")
    from lora_rl_plugins.demo.task import CodebookTask
    from lora_rl_plugins.integrations.trl import LoraRLCallback

    task = CodebookTask()
    trainer = grpo_trainer(RecordingReward(task.reward), tmp_path, steps=6, warm_up=True, learning_rate=5e-2)
    callback = LoraRLCallback(
        trainer, reference_answer=task.reference_answers, probe_every=3, load_entry_points=False, live_view=False
    )
    trainer.add_callback(callback)
    trainer.train()
    # each log's latest values (the quiet log line repeats an unchanged value, answer_bits here, only once)
    measured = [
        latest_logged(trainer.state.log_history[: i + 1])
        for i, e in enumerate(trainer.state.log_history)
        if e.get("learning/probe_step") == e.get("step")
    ]
    assert [e["step"] for e in measured] == [3, 6]
    for entry in measured:
        assert entry["learning/absorbed_bits"] <= entry["learning/answer_bits"]
    assert measured[0]["learning/answer_bits"] == pytest.approx(measured[1]["learning/answer_bits"])  # the reference
    assert 20 < measured[0]["learning/answer_bits"] < 60  # ~ 10 log2 10 for a near-uniform warmed-up base
    last = latest_logged(trainer.state.log_history)
    assert last["learning/prompts_seen"] == 10
    assert last["learning/solved_frac"] + last["learning/unsolved_frac"] + last["learning/informative_frac"] <= 1
    plugin = callback.host.plugin("learning")
    assert sum(e.visits for e in plugin.ledger.entries.values()) == 6 * 4  # 4 prompts per step
    state = callback.host.get_state()
    resumed = LoraRLCallback(trainer, load_entry_points=False, live_view=False)
    resumed.host.set_state(state)
    assert resumed.host.get_state()["learning"] == state["learning"]


def _constant_reward(prompts, completions):
    return [0.0 for _ in prompts]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["warn", "stop"])
def test_signal_exhaustion_warns_or_stops_a_real_run(tmp_path, mode) -> None:
    pytest.importorskip("trl")
    from lora_rl_plugins.integrations.trl import LoraRLCallback
    from lora_rl_plugins.learning.plugin import SignalExhaustedWarning

    trainer = grpo_trainer(RecordingReward(_constant_reward), tmp_path, steps=5)
    trainer.add_callback(
        LoraRLCallback(trainer, on_signal_exhausted=mode, signal_window=2, load_entry_points=False, live_view=False)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    if mode == "warn":
        messages = [str(w.message) for w in caught if issubclass(w.category, SignalExhaustedWarning)]
        assert len(messages) == 1 and "100% unsolved" in messages[0]
        assert trainer.state.global_step == 5
    else:
        assert trainer.state.global_step == 2  # stopped cleanly once the window filled


@pytest.mark.slow
def test_informative_sampling_skips_prompts_that_teach_nothing(tmp_path) -> None:
    pytest.importorskip("trl")
    from lora_rl_plugins.integrations.trl import LoraRLCallback

    rng = random.Random(0)

    def reward(prompts, completions):  # digits 0-4 informative (random), 5-9 always 1 (solved: nothing to learn)
        return [float(rng.random() < 0.5) if int(p[0]) < 5 else 1.0 for p in prompts]

    recorder = RecordingReward(reward)
    trainer = grpo_trainer(recorder, tmp_path, steps=12)
    seen: list[list[str]] = []
    original = trainer._calculate_rewards

    def calculate(inputs, prompts, completions, completion_ids_list):  # TRL's names: the contract check reads them
        seen.append(list(prompts))
        return original(inputs, prompts, completions, completion_ids_list)

    trainer._calculate_rewards = calculate
    callback = LoraRLCallback(
        trainer, informative_sampling=True, skip_after=1, revisit=0.0, load_entry_points=False, live_view=False
    )
    trainer.add_callback(callback)
    trainer.train()
    assert trainer.state.global_step == 12
    assert all(len(batch) == 16 for batch in seen)  # batches stay full
    late = [p for batch in seen[6:] for p in batch]
    assert sum(int(p[0]) >= 5 for p in late) / len(late) < 0.2  # silent prompts skipped before generation
    last = latest_logged(trainer.state.log_history)
    assert last["learning/rollouts_skipped"] > 0 and last["learning/generation_seconds_saved"] > 0


@pytest.mark.slow
def test_demo_absorbed_bits_rise_with_reward_and_stay_below_the_codebook(tmp_path) -> None:
    pytest.importorskip("trl")
    from lora_rl_plugins.demo.run import format_summary, run_demo

    result = run_demo(steps=40, progress=False, output_dir=str(tmp_path))
    steps, absorbed = zip(*result.absorbed, strict=True)
    assert steps == (10, 20, 30, 40)
    answer = result.final["learning/answer_bits"]
    assert all(bits <= answer for bits in absorbed)
    assert absorbed[-1] > absorbed[0] > 0
    assert sum(result.reward[-10:]) > sum(result.reward[:10])  # reward rose with it
    summary = format_summary(result)
    assert "absorbed" in summary and "to learn" in summary and "rank advice" in summary


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reference_answer": "7"}, "option reference_answer expects a callable or a Mapping or None, got '7'"),
        ({"reference_answer": lambda p: "1"}, "needs probe_prompts"),
        ({"probe_every": 0}, "probe_every"),
        ({"on_signal_exhausted": "panic"}, "on_signal_exhausted"),
        ({"signal_threshold": 2.0}, "signal_threshold"),
        ({"revisit": -0.1}, "revisit"),
        ({"probe_prompts": "3="}, "not one string"),
    ],
)
def test_learning_options_refuse_bad_values(options, message) -> None:
    from lora_rl_plugins.bridge.options import PluginOptions

    with pytest.raises((TypeError, ValueError), match=message):
        PluginOptions(**options)


@pytest.mark.slow
def test_report_lists_the_prompts_that_taught_nothing(tmp_path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("matplotlib")
    from lora_rl_plugins.integrations.trl import LoraRLCallback
    from lora_rl_plugins.report.page import write_report

    trainer = grpo_trainer(RecordingReward(_constant_reward), tmp_path, steps=3)
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False, live_view=False))
    trainer.train()
    trainer.save_state()  # the final plugin state (the ledger) rides in trainer_state.json
    page = write_report(tmp_path / "out").read_text()
    assert "prompts taught nothing" in page
    assert "<code>3=</code>" in page or "<code>0=</code>" in page or "=</code>" in page


def _informative_run(tmp_path, name, reward, *, prompts=None, stop=False, resume=False, **options):
    """A 6-step TRL run (checkpoint at step 3) recording the prompts of every generation batch."""
    from transformers import TrainerCallback

    from lora_rl_plugins.integrations.trl import LoraRLCallback

    class StopAt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step >= 3:
                control.should_training_stop = True

    trainer = grpo_trainer(
        RecordingReward(reward), tmp_path / name, steps=6, learning_rate=5e-2, save_strategy="steps", save_steps=3
    )
    if prompts is not None:  # a small dataset: several epochs in 6 steps (4 prompts per generation batch)
        trainer.train_dataset = trainer.train_dataset.select(range(prompts))
    seen: list[list[str]] = []
    original = trainer._calculate_rewards

    def calculate(inputs, prompts, completions, completion_ids_list):  # TRL's names: the contract check reads them
        seen.append(list(prompts))
        return original(inputs, prompts, completions, completion_ids_list)

    trainer._calculate_rewards = calculate
    callback = LoraRLCallback(trainer, load_entry_points=False, live_view=False, **options)
    trainer.add_callback(callback)
    if stop:
        trainer.add_callback(StopAt())
    trainer.train(resume_from_checkpoint=str(tmp_path / name / "out" / "checkpoint-3") if resume else None)
    return callback.host.plugin("learning"), seen, trainer.state.log_history


def _solved_above_four(prompts, completions):  # digits 5-9 always solved; 0-4 depend on the completion
    return [1.0 if int(p[0]) >= 5 else float(c[:1] in "0123") for p, c in zip(prompts, completions, strict=True)]


@pytest.mark.slow
@pytest.mark.parametrize("prompts", [None, 12, 10], ids=["mid-epoch", "at-epoch-end", "second-epoch"])
def test_trl_informative_sampling_resumes_exactly(tmp_path, prompts) -> None:
    pytest.importorskip("trl")
    options = dict(informative_sampling=True, skip_after=1, revisit=0.0)
    straight, straight_seen, _ = _informative_run(tmp_path, "straight", _solved_above_four, prompts=prompts, **options)
    _informative_run(tmp_path, "resumed", _solved_above_four, prompts=prompts, stop=True, **options)
    resumed, resumed_seen, _ = _informative_run(
        tmp_path, "resumed", _solved_above_four, prompts=prompts, resume=True, **options
    )
    assert straight.skipped_prompts > 0
    assert resumed_seen == straight_seen[3:]  # after the resume the same prompts are drawn
    assert resumed.ledger.get_state() == straight.ledger.get_state()
    assert resumed.skipped_prompts == straight.skipped_prompts


@pytest.mark.slow
def test_trl_informative_sampling_that_skips_nothing_is_trls_own_order(tmp_path) -> None:
    """With every skippable prompt revisited (revisit=1.0) informative sampling draws TRL's RepeatSampler order:
    the same prompts in the same order, hence the same TRL metrics, as the plain run at the same seed, over three
    epochs of a 10-prompt dataset (TRL's per-epoch permutations and its dropped last chunk)."""
    pytest.importorskip("trl")
    _, plain_seen, plain_log = _informative_run(tmp_path, "plain", _solved_above_four, prompts=10)
    informative, seen, log = _informative_run(
        tmp_path, "informative", _solved_above_four, prompts=10, informative_sampling=True, skip_after=1, revisit=1.0
    )
    selector = informative.sampler.selector  # the PromptSampler service the learning plugin offers
    assert informative.skipped_prompts == 0 and selector is not None
    assert any(selector.skippable(i) for i in range(10))  # there was something it could have skipped
    assert seen == plain_seen
    assert len({tuple(batch) for batch in seen}) > 1
    timing = ("time", "second", "runtime", "flos")
    for plain_entry, entry in zip(plain_log, log, strict=True):
        shared = {k for k in plain_entry.keys() & entry.keys() if not any(t in k for t in timing)}
        assert {k: plain_entry[k] for k in shared} == {k: entry[k] for k in shared}


@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
def test_ledger_and_bandwidth_agree_on_zero_information(aggregation) -> None:
    """'Informative' is the bandwidth plugin's zero-information test (the trainer's advantages), not equal rewards:
    under normalize_then_sum with weights (1, 2), rewards f1 = (0, 1), f2 = (0.5, 0) combine to (1, 1) yet the
    per-function z-scores give advantages ±a."""
    from lora_rl_plugins.bandwidth.plugin import BandwidthPlugin
    from lora_rl_plugins.learning.plugin import LearningPlugin
    from lora_rl_plugins.plugin.events import RolloutsScored, RunStarted, StepEnded

    run = RunStarted("test", group_size=2, options={"multi_objective_aggregation": aggregation})
    batch = RolloutsScored(
        step=1,
        rewards=[[0.0, 0.5], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],
        reward_names=["f1", "f2"],
        reward_weights=[1.0, 2.0],
        group_size=2,
        prompt_keys=["a", "a", "b", "b", "c", "c"],
    )
    bandwidth, learning = BandwidthPlugin(), LearningPlugin()
    for plugin in (bandwidth, learning):
        plugin.on_run_start(run)
        plugin.on_rollouts_scored(batch)
        plugin.on_step_end(StepEnded(1))
    zero_info = bandwidth.collect_metrics()["bandwidth/zero_info_frac"]
    informative = [learning.ledger.get(key).last == "informative" for key in "abc"]
    assert learning.signal_fraction == pytest.approx(1 - zero_info)
    assert informative[0] == (aggregation == "normalize_then_sum")  # equal combined rewards, unequal advantages
    assert informative[1:] == [False, True]
    assert (learning.ledger.get("a").signal_bits > 0) == informative[0]


def test_selector_draws_the_trainers_order_and_skips_only_within_it() -> None:
    ledger = PromptLedger()
    for _ in range(2):
        ledger.visit("4", outcome="solved", reward_mean=1.0, bits=0.0, step=1)
    order = [5, 2, 4, 0, 3, 1]
    for revisit, expected in ((1.0, [5, 2, 4, 0, 3, 1]), (0.0, [5, 2, 0, 3, 1, 6])):
        selector = InformativeSelector(ledger, str, 8, skip_after=2, revisit=revisit)
        selector.use_stream(order)  # TRL's order; 6 and 7 (its dropped last chunk) follow
        cursor = {"epoch": 0, "position": 0}
        assert selector.draw(3, cursor) + selector.draw(3, cursor) == expected
    with pytest.raises(ValueError, match="distinct indices"):
        selector.use_stream([1, 1])


@pytest.mark.parametrize("kl_reference", ["auto", "base", "initial_adapter", "auto_with_ref"])
def test_absorbed_bits_and_kl_monitor_share_the_reference(kl_reference) -> None:
    """One reference choice (kl.reference.choose_reference) for the KL monitor and learning/absorbed_bits, for
    every kl_reference: the two plugins evaluate the same reference policy (same mode, adapter, snapshot)."""
    from peft import LoraConfig, get_peft_model

    from lora_rl_plugins.bridge.options import PluginOptions
    from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer
    from lora_rl_plugins.lora.adapters import summarize_adapter
    from lora_rl_plugins.plugin.events import AdapterReady, RunStarted

    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(build_tiny_model(), config)
    option = kl_reference.removesuffix("_with_ref")
    if kl_reference == "auto_with_ref":
        model.add_adapter("ref", config)  # TRL's frozen copy of a pre-trained adapter
    options = PluginOptions(kl_reference=option, reference_answer={"1": "1"}, load_entry_points=False)
    host = options.build_host()
    host.on_run_start(RunStarted("test", 2))
    host.on_adapter_ready(AdapterReady(summarize_adapter(model), model, tokenizer=build_tokenizer()))
    monitor, probes = host.plugin("kl_monitor").reference, host.plugin("learning_probes").reference
    expected = {"auto": "disable", "base": "disable", "initial_adapter": "snapshot", "auto_with_ref": "adapter"}
    assert monitor.mode == probes.mode == expected[kl_reference]
    assert monitor.adapter_name == probes.adapter_name
    assert monitor.snapshot.keys() == probes.snapshot.keys()
    for name, saved in monitor.snapshot.items():
        assert saved.equal(probes.snapshot[name])
