"""rnnfast tune end to end on a 20 KB slice of tinyshakespeare with tiny models and a few steps per
trial: a study in SQLite, its ranked table, best.toml rerunning the best trial, continuation, pruning,
failed trials, the grid sampler, two processes sharing a journal-file study, Ctrl-C, bad --param."""
import json
import signal
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna", reason="rnnfast tune needs the tune extra (optuna)")
tomllib = pytest.importorskip("tomllib", reason="best.toml and --space files are read with Python 3.11's tomllib")

from rnnfast.checkpoint import load_checkpoint  # noqa: E402
from rnnfast.tune import TuneError, parse_spec  # noqa: E402
from test_cli import HAVE_MATPLOTLIB, run  # noqa: E402

TINY = ["--layers", 1, "--seq-len", 16, "--batch-size", 4, "--eval-every", 4, "--device", "cpu"]
SEARCH = ["--param", "hidden=8,16", "--param", "lr=1e-3:1e-2:log"]
State = optuna.trial.TrialState


@pytest.fixture(scope="module")
def small(shakespeare_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text(shakespeare_path.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


def study_at(out, name="rnnfast"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def tune_process(*args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from rnnfast.cli import main; main()", "tune", *map(str, args)],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_eval(run_dir) -> dict:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"event": "eval"' in line][-1]


def test_a_sqlite_study_ranks_its_trials_and_best_toml_reruns_the_best(small, tmp_path):
    out = tmp_path / "tune"
    result = run("tune", small, *TINY, "--steps", 8, *SEARCH, "--trials", 3, "--seed", 1, "--out", out)
    trials = study_at(out).get_trials()
    assert [t.state for t in trials] == [State.COMPLETE] * 3
    for t in trials:  # each a whole train run in its own directory
        run_dir = out / f"trial-{t.number:03d}"
        assert {"latest.safetensors", "best.safetensors", "metrics.jsonl", "config.json", "train.log"} <= \
            {p.name for p in run_dir.iterdir()}
        assert t.value == pytest.approx(min(last_eval(run_dir)["val_loss"], t.value))
        assert json.loads((run_dir / "config.json").read_text())["hidden"] == t.params["hidden"]
    # the table: best first
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert [float(r[3]) for r in rows] == sorted(float(r[3]) for r in rows)
    best = min(trials, key=lambda t: t.value)
    assert int(rows[0][1]) == best.number
    assert (out / "history.png").is_file() == HAVE_MATPLOTLIB

    config = tomllib.loads((out / "best.toml").read_text())
    assert config["hidden"] == best.params["hidden"] and config["lr"] == best.params["lr"]
    assert config["seed"] == 1 and config["steps"] == 8 and config["data"] == str(small)
    run("train", "--config", out / "best.toml", "--out", tmp_path / "rerun", "--no-progress")
    rerun = json.loads((tmp_path / "rerun" / "config.json").read_text())
    trial_config = json.loads((out / f"trial-{best.number:03d}" / "config.json").read_text())
    assert {k: rerun.get(k) for k in trial_config} == trial_config  # the same run, setting by setting
    assert last_eval(tmp_path / "rerun")["best_val_loss"] == pytest.approx(best.value, rel=1e-6)


def test_the_same_out_continues_the_study(small, tmp_path):
    out = tmp_path / "tune"
    run("tune", small, *TINY, "--steps", 4, *SEARCH, "--trials", 2, "--out", out)
    result = run("tune", small, *TINY, "--steps", 4, *SEARCH, "--trials", 2, "--out", out)
    assert "continuing study 'rnnfast'" in result.stderr and "(2 trials so far)" in result.stderr
    trials = study_at(out).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3] and all(t.state == State.COMPLETE for t in trials)
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-000", "trial-001", "trial-002", "trial-003"]


def test_pruning_stops_a_hopeless_trial_with_its_checkpoint(small, tmp_path):
    """Contrived: five equal trials at a useful rate, then one at 1e-6, which cannot learn by its first
    validation, so it is worse than their median there (MedianPruner waits for five complete trials)."""
    out = tmp_path / "tune"
    out.mkdir()
    study = optuna.create_study(study_name="rnnfast", storage=f"sqlite:///{out / 'study.db'}")
    for lr in [0.01] * 5 + [1e-6]:
        study.enqueue_trial({"lr": lr})
    result = run("tune", small, *TINY, "--hidden", 8, "--steps", 12, "--param", "lr=1e-6:1e-1:log", "--trials", 6,
                 "--out", out)
    trials = study_at(out).get_trials()
    assert [t.state for t in trials] == [State.COMPLETE] * 5 + [State.PRUNED]
    pruned = trials[-1]
    assert list(pruned.intermediate_values) == [4] and pruned.user_attrs["step"] == 4
    assert "trial 5: pruned at step 4" in result.stderr and " pruned " in result.stdout
    run_dir = out / "trial-005"
    _, meta = load_checkpoint(run_dir / "latest.safetensors")
    assert meta["trainer"]["step"] == 4  # it stopped at the evaluation that pruned it, checkpoint written
    end = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["event"] == "end" and end["stopped"] == "pruned"
    assert "stopped at step 4 (pruned)" in (run_dir / "train.log").read_text()

    study_at(out).enqueue_trial({"lr": 1e-6})
    run("tune", small, *TINY, "--hidden", 8, "--steps", 12, "--param", "lr=1e-6:1e-1:log", "--trials", 1,
        "--no-prune", "--out", out)
    assert study_at(out).get_trials()[-1].state == State.COMPLETE  # the same trial, unpruned, runs to the end


def test_grid_tries_each_combination_once_and_failed_trials_are_recorded_with_their_reason(small, tmp_path):
    """A zoneout pair is for an LSTM only (a GRU is a bad combination), and SGD at 1e30 without clipping
    gives a NaN gradient: those trials fail with train's own message and the search goes on."""
    out = tmp_path / "tune"
    result = run("tune", small, *TINY, "--hidden", 8, "--steps", 8, "--zoneout", "0.1,0.05", "--optimizer", "sgd",
                 "--clip", 0, "--sampler", "grid", "--param", "cell=gru,lstm", "--param", "lr=0.5,1e30",
                 "--trials", 6, "--out", out)
    trials = study_at(out).get_trials()
    assert len(trials) == 4 and "every combination of the grid has been tried" in result.stderr
    assert sorted((t.params["cell"], t.params["lr"]) for t in trials) == \
        [("gru", 0.5), ("gru", 1e30), ("lstm", 0.5), ("lstm", 1e30)]
    by_params = {(t.params["cell"], t.params["lr"]): t for t in trials}
    assert by_params["lstm", 0.5].state == State.COMPLETE
    for key in (("gru", 0.5), ("gru", 1e30)):
        assert by_params[key].state == State.FAIL
        assert "--zoneout P_H,P_C is for --cell lstm" in by_params[key].user_attrs["fail_reason"]
    nan = by_params["lstm", 1e30]
    assert nan.state == State.FAIL and "is nan at step" in nan.user_attrs["fail_reason"]
    assert f"trial {nan.number} failed: the gradient norm is nan" in result.stdout
    assert "Error: the gradient norm is nan" in (out / f"trial-{nan.number:03d}" / "train.log").read_text()
    assert tomllib.loads((out / "best.toml").read_text())["cell"] == "lstm"


def test_two_processes_share_one_study_in_a_journal_file(small, tmp_path):
    out = tmp_path / "tune"
    args = [small, *TINY, "--steps", 4, *SEARCH, "--trials", 2, "--sampler", "random",
            "--storage", f"journal:{out / 'journal.log'}", "--study", "shared", "--out", out]
    procs = [tune_process(*args, "--seed", seed, cwd=tmp_path) for seed in (1, 2)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3] and all(t.state == State.COMPLETE for t in trials)
    for t in trials:
        assert (out / f"trial-{t.number:03d}" / "best.safetensors").is_file()
    assert not (out / "study.db").exists()


def test_ctrl_c_ends_the_trial_cleanly_and_leaves_the_study_intact(small, tmp_path):
    out = tmp_path / "tune"
    proc = tune_process(small, *TINY, *SEARCH, "--trial-budget", 120, "--trials", 3, "--out", out, cwd=tmp_path)
    metrics = out / "trial-000" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not metrics.exists() or '"event": "eval"' not in metrics.read_text()):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "the study is intact" in stderr
    (trial,) = study_at(out).get_trials()
    assert trial.state == State.FAIL
    assert trial.user_attrs["fail_reason"].startswith("interrupted by Ctrl-C at step")
    _, meta = load_checkpoint(out / "trial-000" / "latest.safetensors")
    assert meta["trainer"]["step"] == trial.user_attrs["step"]

    result = run("tune", small, *TINY, "--steps", 4, *SEARCH, "--trials", 1, "--out", out)
    assert "(1 trial so far)" in result.stderr
    assert [t.state for t in study_at(out).get_trials()] == [State.FAIL, State.COMPLETE]


GRAMMAR = "SPEC is a,b,c (a choice), lo:hi (uniform; over whole numbers when both ends are) or lo:hi:log (log-uniform)"


@pytest.mark.parametrize("args, says", [
    (["--param", "hidden"], "write NAME=SPEC"),
    (["--param", "lr=1e-3:x"], "the ends of a range are numbers"),
    (["--param", "lr=1e-3:1e-2:exp"], "is not a range"),
    (["--param", "lr=0:1e-2:log"], "must start above 0"),
    (["--param", "lr=1e-2:1e-3"], "the low end must be below the high end"),
    (["--param", "hidden=8.5:32"], "takes whole numbers"),
    (["--param", "hidden=8,,16"], "an empty choice"),
    (["--param", "cell=lstm:gru"], "the ends of a range are numbers"),
    (["--param", "cell=0:1"], "--cell does not take a number, so give choices"),
    (["--param", "cell=lstm,grux"], "--cell cannot be 'grux'"),
    (["--param", "dropout=0:1"], "--dropout cannot be 1.0"),
])
def test_a_bad_param_is_one_line_naming_the_grammar_and_creates_nothing(small, tmp_path, args, says):
    result = run("tune", small, *args, "--out", tmp_path / "tune", ok=False)
    assert says in result.stderr and GRAMMAR in result.stderr
    assert not (tmp_path / "tune").exists()


@pytest.mark.parametrize("args, says", [
    (["--param", "nosuch=1,2"], "'nosuch' is not a train option that a trial can take; NAME is one of"),
    (["--param", "out=a,b"], "'out' is not a train option"),
    (["--hidden", 8, "--param", "hidden=8,16"], "--hidden is also given as a fixed option"),
    (["--param", "lr=1e-3:1e-2", "--sampler", "grid"], "--sampler grid tries every combination of choices"),
    (["--resume", "x.safetensors"], "--resume continues one run"),
    (["--trial-budget", 5, "--time-budget", 5], "give one of them"),
    (["--hiden", 8], "No such option '--hiden'"),
    (["--space", "nowhere.toml"], "Invalid value for '--space': file not found: nowhere.toml"),
])
def test_other_bad_options_are_one_line_and_create_nothing(small, tmp_path, args, says):
    result = run("tune", small, *args, "--out", tmp_path / "tune", ok=False)
    assert says in result.stderr
    assert not (tmp_path / "tune").exists()


def test_a_space_file_and_the_spec_grammar(small, tmp_path):
    space = tmp_path / "space.toml"
    space.write_text('hidden = [8, 16]\nlr = "1e-3:1e-2:log"\n')
    out = tmp_path / "tune"
    result = run("tune", small, *TINY, "--steps", 4, "--space", space, "--param", "hidden=12", "--trials", 1,
                 "--out", out)
    assert "searching hidden=12, lr=0.001:0.01:log" in result.stderr  # --param wins over the file
    assert study_at(out).get_trials()[0].params["hidden"] == 12
    assert parse_spec("0:1", number=float) == optuna.distributions.FloatDistribution(0.0, 1.0)
    assert parse_spec("1:3") == optuna.distributions.IntDistribution(1, 3)
    assert parse_spec("16:256:log", number=int) == optuna.distributions.IntDistribution(16, 256, log=True)
    assert parse_spec("lstm,gru,true,0.5").choices == ("lstm", "gru", True, 0.5)
    with pytest.raises(TuneError, match="SPEC is a,b,c"):
        parse_spec("1:2:3")


def test_without_optuna_tune_says_what_to_install(small, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # what an import of a missing package does
    result = run("tune", small, "--out", tmp_path / "tune", ok=False)
    assert "rnnfast tune needs Optuna" in result.stderr and "pip install 'rnnfast[tune]'" in result.stderr
