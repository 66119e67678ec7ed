"""Every input does what it says or is refused before any work starts: exit 2, one line "error: ...".

A property-based test draws a script, one of its numeric settings and a bad value (0 where 0 is not
allowed, negatives, NaN, infinities, huge numbers) and checks the refusal: status 2, one line that
names the setting, no traceback, nothing written, in seconds. Then the inputs a new user tried,
each with the line it now gets, and bad files.
"""
import contextlib
import dataclasses
import io
import tempfile
import time
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt_np.train.settings import PipelineSettings

from .conftest import TINY, flags, load_cli

BAD_VALUES = ["-1", "-5", "nan", "inf", "-inf", "1e300", str(10**30), "0"]
# Settings for which 0 is a valid value (the test's own list, not the code's ranges).
ZERO_IS_VALID = {"checkpoint_every", "dropout", "weight_decay", "rl_kl_coef", "rl_entropy_coef",
                 "rl_missing_stop_penalty", "rl_baseline_decay", "seed", "warmup", "kl_coefs",
                 "sample:temperature", "sample:seed", "compare_rl:seeds", "entropy_coef", "bench_ranks:rl_steps",
                 "lab_steps", "sft_answer_chars", "rm_steps", "rm_sft_samples"}

NUMERIC = {
    "run_all": [f.name for f in dataclasses.fields(PipelineSettings) if f.type in (int, float, "int", "float")],
    "sample": ["samples", "temperature", "top_k", "max_new_tokens", "seed"],
    "compare_rl": ["steps", "samples", "lr", "seeds", "kl_coefs", "entropy_coef", "last", "best_of", "pool"],
    "bench": ["steps", "warmup", "rl_steps", "rounds", "large_batch", "pipeline_scale"],
    "bench_ranks": ["ranks", "batches", "threads", "steps", "warmup", "rl_steps", "rounds"],
}
POSITIONAL = {"sample": ["runs/x/sft"], "compare_rl": ["runs/x/sft"], "run_all": [], "bench": [], "bench_ranks": []}


CLIS = {script: load_cli(script) for script in NUMERIC}


class WorkStarted(AssertionError):
    """A setting that should have been refused got as far as the work itself."""


WORK = {"run_all": ["run_pipeline"], "compare_rl": ["rl_from_checkpoint", "best_of_n_baseline"], "bench": ["in_rounds", "run_worker"],
        "sample": ["generate"], "bench_ranks": ["measure"]}


def run(script, args, refuse_work=True):
    """(exit status, stderr) of the script's main, in this process; with refuse_work, the script's work
    (the pipeline, the measurements) raises WorkStarted instead of running, so a refusal that fails
    shows as a failure at once, not as a long run."""
    err = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stderr(err))
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        for name in WORK[script] if refuse_work else []:
            stack.enter_context(mock.patch.object(CLIS[script], name, side_effect=WorkStarted(f"{script}: {name}")))
        try:
            code = CLIS[script].main(args)
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue()


def test_every_numeric_setting_of_run_all_is_covered():
    assert len(NUMERIC["run_all"]) >= 30 and "batch_size" in NUMERIC["run_all"] and "seed" in NUMERIC["run_all"]
    ranged = {f.name for f in dataclasses.fields(PipelineSettings) if f.metadata["range"] is not None}
    assert ranged == set(NUMERIC["run_all"])  # every number has a stated range


@settings(max_examples=120, deadline=None)
@given(script_and_name=st.sampled_from([(s, n) for s, names in NUMERIC.items() for n in names]),
       value=st.sampled_from(BAD_VALUES))
def test_a_bad_number_is_refused_in_one_line(script_and_name, value):
    script, name = script_and_name
    if value == "0" and (name in ZERO_IS_VALID or f"{script}:{name}" in ZERO_IS_VALID):
        return
    with tempfile.TemporaryDirectory() as folder:
        args = [*POSITIONAL[script], "--" + name.replace("_", "-"), value]
        if script in ("run_all", "compare_rl"):
            args += ["--runs-dir" if script == "run_all" else "--out", str(Path(folder) / "out")]
        started = time.perf_counter()
        code, err = run(script, args)
        seconds = time.perf_counter() - started
        assert code == 2, (script, args, code, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (script, args, err)
        assert "--" + name.replace("_", "-") in lines[0] and "Traceback" not in err, (script, args, err)
        assert list(Path(folder).iterdir()) == [], "a folder was written before the refusal"
        assert seconds < 20, f"{script} {args}: the refusal took {seconds:.1f} s"


# The inputs a new user tried (issue: 10 of 26 crashed, hung or ran silently), each with its line now.
TRIED = [
    (["--pretrain-eval-every", "0"], "error: --pretrain-eval-every: must be an integer >= 1 and <= 1e+07, got 0"),
    (["--max-new-tokens", "0"], "error: --max-new-tokens: must be an integer >= 1 and <= 100000, got 0"),
    (["--temperature", "-1"], "error: --temperature: must be a number > 0 and <= 100, got -1.0"),
    (["--top-k", "0"], "error: --top-k: must be an integer >= 1 and <= 1e+06, got 0"),
    (["--grad-clip", "-1"], "error: --grad-clip: must be a number > 0 and <= 1e+06, got -1.0"),
    (["--rl-kl-coef", "-1"], "error: --rl-kl-coef: must be a number >= 0 and <= 1000, got -1.0"),
    (["--checkpoint-every", "-1"], "error: --checkpoint-every: must be an integer >= 0 and <= 1e+07, got -1"),
    (["--pretrain-steps", "-5"], "error: --pretrain-steps: must be an integer >= 1 and <= 1e+07, got -5"),
    (["--batch-size", "0"], "error: --batch-size: must be an integer >= 1 and <= 65536, got 0"),
    (["--dropout", "1"], "error: --dropout: must be a number >= 0 and < 1, got 1.0"),
    (["--lr-typo", "1"], "error: unrecognized arguments: --lr-typo 1"),
    (["--batch-size", "many"], "error: argument --batch-size: invalid int value: 'many'"),
    (["--n-heads", "5"], "error: --n-heads: must divide --d-model (128) into equal heads, got 5"),
    (["--rl-samples", "1"], "error: --rl-samples: the rloo advantage compares the samples of a prompt, so it "
                            "needs at least 2, got 1"),
    (["--data", "embedded", "--train-file", "README.md"], "error: --train-file: given with --data embedded, which "
                                                          "trains on the built-in corpus; drop it, or use --data wikitext"),
    (["--sft-file", "nowhere.jsonl"], "error: --sft-file: nowhere.jsonl is not a file"),
    (["--reward", "nowhere"], "error: --reward: unknown reward 'nowhere'; use one of original, guarded, "
                              "fluent or module:function"),
    (["--backend", "torch", "--kernels", "plain"], "error: --kernels: plain is for the numpy backend; the torch "
                                                   "backend has one form of its ops"),
]


@pytest.mark.parametrize("args, line", TRIED, ids=[" ".join(args) for args, _ in TRIED])
def test_the_inputs_a_new_user_tried_are_refused_with_one_line(tmp_path, args, line):
    code, err = run("run_all", [*args, "--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and err.strip() == line, err
    assert not (tmp_path / "runs").exists()


def test_a_runs_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    code, err = run("run_all", ["--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and err.strip() == f"error: --runs-dir: {tmp_path / 'runs'} is a file, not a folder"


TINY_FLAGS = ["--preset", "quick", "--backend", "numpy",
              *flags({**TINY, "pretrain_steps": 1, "sft_steps": 1, "rl_steps": 1, "context_length": 16, "batch_size": 2,
                      "eval_windows": 2, "max_new_tokens": 4})]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "is a binary file, not text"),
    ("caf\u00e9 au lait ".encode("latin-1") * 20, "is not UTF-8 text (byte 3 cannot be decoded)"),
])
def test_bad_corpus_files_are_named(tmp_path, content, message):
    bad = tmp_path / "train.txt"
    bad.write_bytes(content)
    good = tmp_path / "valid.txt"
    good.write_text("a line of plain text for the validation split\n" * 20)
    code, err = run("run_all", [*TINY_FLAGS, "--data", "wikitext", "--train-file", str(bad), "--validation-file", str(good),
                                "--runs-dir", str(tmp_path / "runs")], refuse_work=False)
    assert code == 2 and err.strip() == f"error: the train file {bad} {message}", err


@pytest.mark.parametrize("content, message", [
    ("", "SFT file {path} is empty"),
    ('["instruction", "answer"]\n', "{path}, line 1: expected an object with instruction and answer"),
    ('{"instruction": "Say hi.", "answer": "Hi!"}\n', "need at least 2 instruction/answer pairs (one to train on, "
                                                       "one held out), got 1"),
    ('{"instruction": "Say hi.", "answer": ""}\n', "{path}, line 1: 'answer' must be a non-empty string"),
    ("\xff\xfe{}".encode("latin-1"), "SFT file {path} is not UTF-8 text (byte 0 cannot be decoded)"),
])
def test_bad_sft_files_are_named(tmp_path, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    code, err = run("run_all", [*TINY_FLAGS, "--data", "embedded", "--sft-file", str(path), "--runs-dir",
                                str(tmp_path / "runs")], refuse_work=False)
    assert code == 2 and err.strip() == "error: " + message.format(path=path), err


def test_sample_and_compare_rl_name_their_settings(tmp_path):
    code, err = run("sample", [str(tmp_path), "--temperature", "nan"])
    assert code == 2 and err.strip() == "error: --temperature: must be a number >= 0 and <= 100, got nan " \
                                        "(not a finite number)"
    code, err = run("compare_rl", [str(tmp_path), "--kl-coefs", "0", "-0.5", "--out", str(tmp_path / "o")])
    assert code == 2 and err.strip() == "error: --kl-coefs: must be a number >= 0 and <= 1000, got -0.5"
    code, err = run("compare_rl", [str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "is not a checkpoint" in err and not (tmp_path / "o").exists()
