"""The learner's lab: write the model's pieces yourself, and have them graded.

    python -m minigpt_np.lab                 # the exercises, in reading order
    python -m minigpt_np.lab start 3         # writes lab/03_layer_norm.py (never over a file that is there)
    python -m minigpt_np.lab check 3         # grades it
    python -m minigpt_np.lab check           # grades every exercise started in lab/

The seam between the two sides:

- an ``Exercise`` (``exercises.py``) knows what to ask (the stub: a task, the signature, and the code
  that is given, e.g. the forward where the exercise is the backward), how to run a function of that
  signature on a few fixed cases (``run(fn, case) -> {part: array}``: the output, each input's gradient,
  the updated state), the right answer (the project's own code), and the usual wrong answers, each a
  ``Mistake``: its message and what that mistake would give on a case;
- the grader (``grader.py``) runs the learner's function and the reference on the same cases and
  compares part by part. Where they differ, it asks each mistake whether it predicts exactly what the
  learner's function gave, and names it; otherwise it says which part differs, by how much and where.
  A stub not yet written is "not written yet", a wrong shape gets both shapes, an exception its line.
"""
from .exercises import EXERCISES
from .grader import grade, grade_file

__all__ = ["EXERCISES", "grade", "grade_file"]
