"""Grade a learner's function: against the project's own code, part by part, naming the usual mistakes."""
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..check_op import UsageError, load_function

# float64 throughout; a part is right when |given - reference| <= ATOL + RTOL * max|reference| over the part
# (the parity contract's float64 bound: rounding grows with the size of what was summed, not with each entry).
ATOL, RTOL = 1e-10, 1e-8


@dataclass
class Grade:
    status: str  # "passed", "failed" or "not written yet"
    lines: list = field(default_factory=list)  # what to tell the learner

    @property
    def passed(self):
        return self.status == "passed"


def close(given, expected):
    """Same shape, and every entry within ATOL + RTOL * max|expected| (NaNs where the reference has them)."""
    given, expected = np.asarray(given, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if given.shape != expected.shape:
        return False
    if not np.array_equal(np.isnan(given), np.isnan(expected)):
        return False
    finite = ~np.isnan(expected)
    scale = np.max(np.abs(expected[finite]), initial=0.0)
    return bool(np.all(np.abs(given[finite] - expected[finite]) <= ATOL + RTOL * scale))


def grade(exercise, function, seed=0):
    """Run function and the exercise's reference on every case; the first case that shows a problem
    decides the grade. Returns a Grade."""
    for case in exercise.cases(np.random.default_rng(seed)):
        expected = exercise.run(exercise.reference, case)
        try:
            given = exercise.run(function, case)
        except NotImplementedError:
            return Grade("not written yet", [f"{exercise.name}: not written yet (it raises NotImplementedError)"])
        except Exception as error:  # the learner's code: say what and where, in a line or two
            return Grade("failed", [f"{exercise.name} on {case.description}: raised "
                                    f"{type(error).__name__}: {error}", *_where(error)])
        problems = _compare(exercise, case, given, expected)
        if problems:
            return Grade("failed", [f"{exercise.name} on {case.description}:", *problems])
    return Grade("passed", [f"{exercise.name}: passed (every part equals the reference on every case)"])


def _compare(exercise, case, given, expected):
    """Nothing when given equals expected; else the named mistake that explains it, or each wrong part."""
    wrong = [part for part in expected if part not in given or not close(given[part], expected[part])]
    if not wrong:
        return []
    for mistake in exercise.mistakes:
        predicted = {**expected, **mistake.predict(case, expected)}
        if all(close(predicted[part], expected[part]) for part in wrong):
            continue  # this mistake would give the right numbers here: it cannot be what happened
        if all(part in given and close(given[part], predicted[part]) for part in predicted):
            return [f"  {mistake.message}"]
    lines = []
    for part in wrong:
        if part not in given:
            lines.append(f"  {part}: not returned")
            continue
        got, want = np.asarray(given[part], dtype=np.float64), np.asarray(expected[part], dtype=np.float64)
        if got.shape != want.shape:
            lines.append(f"  {part}: shape {got.shape}, expected {want.shape}")
            continue
        difference = np.abs(np.nan_to_num(got - want, nan=np.inf))
        where = np.unravel_index(np.argmax(difference), difference.shape)
        lines.append(f"  {part}: differs by up to {difference[where]:.3g} (at {tuple(int(i) for i in where)}: "
                     f"yours {got[where]:.6g}, expected {want[where]:.6g})")
    return lines


def _where(error):
    """The last line of the traceback that is not the lab's own code: where the learner's code failed."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if Path(frame.filename).parent != Path(__file__).parent]
    if not frames:
        return []
    frame = frames[-1]
    return [f"  at {frame.filename}:{frame.lineno}: {frame.line}"]


def load_learner_function(path, name):
    """The function ``name`` of the learner's file, or a Grade that says why there is none."""
    try:
        return load_function(f"{path}:{name}")
    except UsageError as error:
        return Grade("failed", [str(error)])


def grade_file(exercise, path, seed=0):
    """Grade the exercise's function in the learner's file."""
    function = load_learner_function(path, exercise.name)
    return function if isinstance(function, Grade) else grade(exercise, function, seed)
