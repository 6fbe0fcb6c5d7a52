"""The bench scenarios that measure a user's job: the whole training step, time to loss, the cold
start and the sweep. Tiny shapes and budgets; what is checked is that each scenario measures what
it says (the same model, data and step on both sides, a disagreement is an error row, the fields
and files are there), never how fast anything is."""
import json
import math

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
import rnnfast as rf  # noqa: E402
from rnnfast.bench import harness, scenarios, torch_reference  # noqa: E402
from rnnfast.bench.scenarios import Scenario  # noqa: E402
from rnnfast.bench.time_to_loss import bench_time_to_loss, corpus_path  # noqa: E402
from rnnfast.bench.train_step import bench_train_step, build_pair, one_update, random_stream  # noqa: E402
from rnnfast.cli import main  # noqa: E402
from rnnfast.corpus import default_corpus_path  # noqa: E402


def tiny_step(cell="lstm", kind="train-step", **shape):
    return Scenario(cell, kind, **{"T": 6, "B": 3, "I": 8, "H": 8, "layers": 2, "vocab": 11, **shape})


def bench_rows(monkeypatch, chosen, **kwargs):
    """run_bench over ``chosen`` scenarios (as the quick set), one timed round each."""
    monkeypatch.setattr(scenarios, "QUICK", chosen)
    monkeypatch.setattr(harness, "sgemm_rate", lambda: {"rnnfast gemm": 1.0, "numpy BLAS": 1.0})
    return harness.run_bench(repeats=1, **kwargs)


# -- train-step ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_train_step_row_has_both_libraries_after_agreeing(cell):
    row = bench_train_step(tiny_step(cell), repeats=1, with_torch=True)
    assert row["max_rel_err"] < harness.TOLERANCE["float32"]
    for key in ("ms", "torch_ms", "tokens_per_s", "torch_tokens_per_s", "ratio"):
        assert row[key] > 0
    assert row["tokens_per_s"] == pytest.approx(6 * 3 / (row["ms"] / 1e3))


def test_both_sides_run_the_same_steps_with_the_state_carried():
    s = tiny_step(T=4)
    trainer, reference = build_pair(s, random_stream(s), with_torch=True)
    for _ in range(6):  # over an epoch boundary (4 batches), where both forget the carried state
        assert one_update(trainer) == pytest.approx(reference.one_step(), rel=1e-4)
    weights = reference.model.state_dict()
    for name, p in trainer.model.params.items():
        assert harness.rel_err(p, weights[name].numpy()) < 1e-3, name


def test_a_train_step_disagreement_is_an_error_row_never_a_ratio(monkeypatch):
    copy = torch_reference.from_rnnfast

    def perturbed(model):
        ref = copy(model)
        ref.rnn.weight_hh_l1.data += 0.05
        return ref

    monkeypatch.setattr(torch_reference, "from_rnnfast", perturbed)
    _, row = bench_rows(monkeypatch, [tiny_step()])
    assert "disagree after one training step" in row["error"] and "ratio" not in row and "ms" not in row
    assert "| train-step lstm 2x8 B=3 T=6 | error: AssertionError: rnnfast and PyTorch disagree" in \
        harness.format_table([row])


def test_train_step_rows_print_as_their_own_table(monkeypatch):
    results = bench_rows(monkeypatch, [tiny_step("gru"), Scenario("gru", "fwd+bwd", 4, 2, 3, 5)])
    assert all("error" not in r for r in results[1:])
    table = harness.format_table(results)
    assert "| scenario | ms/step | torch ms/step | ratio | tokens/s | torch tokens/s | max rel err | load |" in table
    line = next(x for x in table.splitlines() if x.startswith("| train-step gru 2x8 B=3 T=6 |"))
    assert len(line.split("|")) == 10
    assert "| fwd+bwd gru (4,2,3,5) |" in table  # the layer table is still there


def test_the_quick_and_full_sets_hold_the_training_steps():
    quick = [s.name for s in scenarios.select() if s.kind == "train-step"]
    assert quick == [f"train-step {c} 2x{H} B=32 T=64" for H in (128, 256) for c in ("lstm", "gru", "rnn_tanh")]
    full = scenarios.select(full=True)
    assert len([s for s in full if s.kind == "train-step"]) == 9
    assert {s.kind for s in full} >= {"time-to-loss", "cold-start"}
    assert "cold-generate" not in scenarios.KINDS


# -- time-to-loss -------------------------------------------------------------------------------

def test_time_to_loss_reports_both_best_losses_and_steps():
    s = Scenario("lstm", "time-to-loss", T=16, B=4, I=16, H=16, layers=1, seconds=1.0, eval_every=5,
                 data=str(default_corpus_path()))
    row = bench_time_to_loss(s, with_torch=True)
    assert row["eval_rel_err"] < harness.TOLERANCE["float32"]
    assert row["steps"] >= 1 and row["torch_steps"] >= 1
    # nats per character, near log(vocabulary) this early (how far below depends on the steps done)
    vocab = len(rf.data.Vocab.from_text(default_corpus_path().read_text()))
    assert 0 < row["best_val"] < math.log(vocab) + 1 and 0 < row["torch_best_val"] < math.log(vocab) + 1
    assert row["loss_diff"] == pytest.approx(row["torch_best_val"] - row["best_val"])
    assert row["steps_ratio"] == pytest.approx(row["steps"] / row["torch_steps"])


def test_time_to_loss_finds_the_corpus_where_the_tests_do(shakespeare_path):
    assert corpus_path(Scenario("lstm", "time-to-loss")) == shakespeare_path


def test_time_to_loss_without_its_corpus_is_a_one_line_error_row(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere.txt"
    _, row = bench_rows(monkeypatch, [scenarios.TIME_TO_LOSS], data=missing)
    assert row["error"] == (f"FileNotFoundError: corpus not found at {missing}; pass the path of "
                            "tinyshakespeare.txt (or any text) with --data PATH")
    assert "\n" not in row["error"]


# -- cold-start ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_cold_start_times_train_then_generate_cold_and_warm():
    from rnnfast.bench.cold_start import bench_cold_start

    row = bench_cold_start(Scenario("rnn_tanh", "cold-start", I=16, H=16, layers=1, chars=20))
    for key in ("cold_train_s", "cold_generate_s", "warm_train_s", "warm_generate_s"):
        assert row[key] > 0
    assert "train --steps 1" in row["method"] and "generate --length 20" in row["method"]
    assert "| cold-start rnn_tanh 1x16 N=20 |" in harness.format_table(
        [{"scenario": "cold-start rnn_tanh 1x16 N=20", "kind": "cold-start", **row}])


# -- sweep --------------------------------------------------------------------------------------

def test_peak_memory_of_a_whole_training_step_is_measured_for_both():
    from rnnfast.bench.memory import bench_memory

    # (T, B, 4H) float32 gates are 2 MiB: a step that saves its activations needs at least that
    row = bench_memory(tiny_step(kind="sweep", T=64, B=32, I=64, H=64), with_torch=True)
    assert row["peak_mib"] > 1 and row["torch_peak_mib"] > 1
    assert row["ratio"] == pytest.approx(row["torch_peak_mib"] / row["peak_mib"])


def test_sweep_writes_the_table_the_json_and_the_plot(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    from rnnfast.bench import sweep

    monkeypatch.setattr(scenarios, "SWEEP_HIDDEN", (8, 16))
    monkeypatch.setattr(scenarios, "SWEEP_LENGTH", (4,))
    monkeypatch.setattr(harness, "sgemm_rate", lambda: {"rnnfast gemm": 1.0, "numpy BLAS": 1.0})
    # measured by the test above; here each point's memory is its size, to see it reach the row
    monkeypatch.setattr(sweep, "bench_memory", lambda s, with_torch: {
        "peak_mib": float(s.H), "torch_peak_mib": 2.0 * s.H, "ratio": 2.0, "method": "stand-in"})
    plot = tmp_path / "sweep.png"
    result = CliRunner().invoke(main, ["bench", "--sweep", "--repeats", "1", "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    rows = results[1:]
    assert [(r["H"], r["T"]) for r in rows] == [(8, 64), (16, 64), (256, 4)]
    for r in rows:
        assert "error" not in r, r["error"]
        assert r["ms"] > 0 and r["torch_ms"] > 0 and r["max_rel_err"] < harness.TOLERANCE["float32"]
        assert (r["peak_mib"], r["torch_peak_mib"], r["mem_ratio"]) == (r["H"], 2 * r["H"], 2.0)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = harness.format_table(results)
    assert ("| scenario | ms/step | torch ms/step | ratio | tokens/s | torch tokens/s | peak MiB | torch peak MiB "
            "| memory ratio | max rel err | load |") in table
    assert "| sweep lstm 2x16 B=32 T=64 |" in table


def test_sweep_without_matplotlib_says_how_to_get_it(monkeypatch):
    import builtins

    from rnnfast.bench.sweep import plot_sweep

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (
        (_ for _ in ()).throw(ImportError(name)) if name.startswith("matplotlib") else real_import(name, *a, **k)))
    row = {"kind": "sweep", "cell": "lstm", "H": 8, "T": 64, "B": 32, "layers": 2, "vocab": 65, "ms": 1.0,
           "peak_mib": 1.0}
    with pytest.raises(RuntimeError, match=r"pip install matplotlib"):
        plot_sweep([row], "unused.png")


def test_sweep_points_are_the_issues_sizes():
    points = scenarios.select(sweep_points=True)
    assert [(s.H, s.T) for s in points] == [(64, 64), (128, 64), (256, 64), (512, 64), (1024, 64),
                                            (256, 32), (256, 128), (256, 512), (256, 2048)]
    assert {(s.cell, s.layers, s.B) for s in points} == {("lstm", 2, 32)}
    with pytest.raises(ValueError, match="cells are lstm, gru, rnn_tanh"):
        scenarios.select(sweep_points=True, cells=["rnn_relu"])


def test_bench_help_names_the_new_options():
    out = CliRunner().invoke(main, ["bench", "--help"]).output
    assert "--sweep" in out and "--plot" in out and "--data" in out



# -- option-cost ----------------------------------------------------------------------------------

def test_option_cost_rows_time_the_option_against_the_plain_step_and_print(monkeypatch):
    from rnnfast.bench.option_cost import _trainer, parse_option

    chosen = [tiny_step(cell, "option-cost", option=option) for cell in ("lstm", "gru")
              for option in scenarios.OPTIONS]
    rows = bench_rows(monkeypatch, chosen)[1:]
    for row in rows:
        assert "error" not in row, row
        assert row["ms"] > 0 and row["plain_ms"] > 0 and row["cost"] > 0
    table = harness.format_table(rows)
    assert "cost (with / plain)" in table and "option-cost lstm 2x8 B=3 T=6 zoneout=0.1" in table
    # the option is on in the timed model and only there
    s = chosen[0]
    assert parse_option("zoneout=0.1+weight_drop=0.2") == {"zoneout": 0.1, "weight_drop": 0.2}
    assert parse_option("layer_norm=True") == {"layer_norm": True}
    assert _trainer(s, random_stream(s), **parse_option(s.option)).model.rnn.recurrent_dropout == 0.25
    assert _trainer(s, random_stream(s)).model.rnn.recurrent_dropout == 0.0
    assert len([x for x in scenarios.FULL if x.kind == "option-cost"]) == 12
