"""python -m minigpt_np.lab [list | start N | check [N ...]] [--dir FOLDER]: see minigpt_np/lab/__init__.py."""
import sys
from pathlib import Path

from . import EXERCISES
from .exercises import stub_text
from ..train.validation import OneLineParser
from .grader import grade_file


def stub_path(folder, number):
    return Path(folder) / f"{number:02d}_{EXERCISES[number - 1].name}.py"


def main(argv=None, out=sys.stdout):
    parser = OneLineParser(prog="python -m minigpt_np.lab", description=__doc__)
    parser.add_argument("command", nargs="?", default="list", choices=("list", "start", "check"))
    parser.add_argument("numbers", nargs="*", type=int, help="exercise numbers (check: default every started one)")
    parser.add_argument("--dir", default="lab", help="your lab folder (default ./lab)")
    args = parser.parse_args(argv)
    bad = [n for n in args.numbers if not 1 <= n <= len(EXERCISES)]
    if bad or (args.command == "start" and len(args.numbers) != 1):
        what = f"no exercise {bad[0]} (there are 1-{len(EXERCISES)})" if bad else "start takes one exercise number"
        print(f"error: {what}", file=sys.stderr)
        return 2
    if args.command == "list":
        for number, exercise in enumerate(EXERCISES, 1):
            started = "started" if stub_path(args.dir, number).exists() else ""
            print(f"{number:>3}. {exercise.title:<55} {started}".rstrip(), file=out)
        print(f"\npython -m minigpt_np.lab start N writes {args.dir}/NN_name.py; check N grades it.", file=out)
        return 0
    if args.command == "start":
        path = stub_path(args.dir, args.numbers[0])
        if path.exists():
            print(f"error: {path} exists; your work there is kept (delete it to start again)", file=sys.stderr)
            return 2
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(stub_text(args.numbers[0], EXERCISES[args.numbers[0] - 1]), encoding="utf-8")
        except OSError as error:
            print(f"error: --dir: cannot write {path}: {error.strerror or error}", file=sys.stderr)
            return 2
        print(f"wrote {path}: write the part that raises NotImplementedError, then: "
              f"python -m minigpt_np.lab check {args.numbers[0]}", file=out)
        return 0
    numbers = args.numbers or [n for n in range(1, len(EXERCISES) + 1) if stub_path(args.dir, n).exists()]
    if not numbers:
        print(f"error: no exercise started in {args.dir}/ (python -m minigpt_np.lab start 1)", file=sys.stderr)
        return 2
    passed = 0
    for number in numbers:
        path = stub_path(args.dir, number)
        if not path.exists():
            print(f"{number}. {path}: not started (python -m minigpt_np.lab start {number})", file=out)
            continue
        grade = grade_file(EXERCISES[number - 1], path)
        passed += grade.passed
        print(f"{number}. " + "\n".join(grade.lines), file=out)
    print(f"\n{passed} of {len(numbers)} passed", file=out)
    return 0 if passed == len(numbers) else 1


if __name__ == "__main__":
    sys.exit(main())
