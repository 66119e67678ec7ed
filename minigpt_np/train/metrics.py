"""metrics.jsonl: one JSON object per logged point, {"stage": ..., "step": N, <figure>: value, ...}.

One name per figure across the whole project (a record with "summary": true holds the evaluation
made after the stage ended, the same for every stage):

    train_loss    the training loss on the step's batch (pretrain: cross-entropy; SFT: answer-only
                  cross-entropy)
    policy_loss   RL: the REINFORCE surrogate -(1/N) sum_i A_i sum_t log p (its value is not a
                  measure of quality; its gradient is the policy gradient)
    val_loss      cross-entropy per character on the corpus validation windows
    val_bpc       the same in bits per character (val_loss / ln 2)
    val_ppl       perplexity per character (exp val_loss)
    test_loss, test_bpc   the same on the test text (once, at the end of pretraining)
    answer_loss   answer-only cross-entropy on the held-out instruction/answer pairs
    format_rate   share of sampled answers to the held-out prompts that are " <text>\\n" (an answer, then the newline)
    unfinished_rate, empty_rate   of those answers: cut off at max_new_tokens; closed at once
    reward_mean, reward_std, reward/<component>   RL rewards of the step's samples
    heldout_reward_mean   mean reward of samples for the held-out prompts
    grad_norm     global gradient norm before clipping
    step_seconds  wall-clock time of a step (batch or rollout, loss, backward, update; no evaluation),
                  the mean over the steps since the previous logged one
    length_chars  mean length of the sampled answers in characters
    kl, kl_per_answer   RL: the exact KL to the frozen SFT policy per sampled character, and summed
                  over each answer's characters (nats per answer, the unit of best-of-N's KL)
    real_word_rate, repeat_rate, readable_frac   how much the sampled answers read as language
                  (readability.py): the figures the reward does not see
    original_reward_mean, guarded_reward_mean    the samples scored by each named reward, whichever
                  reward the run trains on

rl/samples.jsonl has the same form, one record per sampled answer (RL's first step, every eval_every-th,
the last 20, and the final
policy's samples with "final": true): prompt, answer, reward, components, finished, real_word_rate,
repeat_rate, readable.
"""
import json
import os
from pathlib import Path

from .checkpoint import write_durably


class MetricsLog:
    """The records of metrics.jsonl, appended one line at a time.

    A crash can cut the last line short: on opening, a last line that is not whole JSON is dropped
    (with a notice), since the stage's checkpoint is older than it anyway and the resumed stage logs
    that step again. A damaged line anywhere else is an error: the file is not what this run wrote.
    """

    def __init__(self, path, notify=print, writes=True):
        """writes False: keep the records in memory only (the ranks of a data-parallel run but the first)."""
        self.path, self.writes = Path(path), writes
        self.records = []
        if not self.path.exists():
            return
        text = self.path.read_bytes().decode("utf-8", errors="replace")
        lines = text.split("\n")
        whole, last = lines[:-1], lines[-1]  # last: what follows the final newline ("" when the file ends whole)
        for number, line in enumerate(whole, 1):
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(whole) and not last:  # the last line, cut short before its newline was written
                    last = line
                    break
                raise ValueError(f"{self.path}: line {number} is not a JSON record; the file is damaged") from None
        if last.strip():
            notify(f"notice: {self.path}: dropped a last line cut short by a crash ({len(last)} characters)")
            self._rewrite()

    def log(self, stage, step, summary=False, **figures):
        """Append one point. summary=True marks the end-of-stage figures (the same evaluation after
        every stage, for the comparison table), which the per-step series leave out."""
        record = {"stage": stage, "step": int(step), **({"summary": True} if summary else {}),
                  **{k: _plain(v) for k, v in figures.items()}}
        self.records.append(record)
        self._append([record])

    def log_many(self, stage, step, rows):
        """Append one record per row (a dict of fields), all at the same step, with one write and one fsync."""
        records = [{"stage": stage, "step": int(step), **{k: _plain(v) for k, v in row.items()}} for row in rows]
        self.records.extend(records)
        self._append(records)

    def _append(self, records):
        if not self.writes:
            return
        with open(self.path, "a") as handle:
            handle.write("".join(json.dumps(record) + "\n" for record in records))
            handle.flush()
            os.fsync(handle.fileno())

    def truncate_after(self, stage, step):
        """Forget the stage's points after step (a resumed run logs them again), rewriting the file."""
        kept = [r for r in self.records if not (r["stage"] == stage and r["step"] > step)]
        if len(kept) != len(self.records) or not self.path.exists():
            self.records = kept
            self._rewrite()

    def _rewrite(self):
        """Replace the file with the records, atomically: a crash leaves the old file or the new one."""
        if self.writes:
            write_durably(self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode("utf-8"))

    def series(self, stage, name):
        """(steps, values) of one figure in one stage, during training (end-of-stage summaries left out)."""
        points = [(r["step"], r[name]) for r in self.records
                  if r["stage"] == stage and name in r and not r.get("summary")]
        return [p[0] for p in points], [p[1] for p in points]

    def last(self, stage, name, default=None):
        values = self.series(stage, name)[1]
        return values[-1] if values else default


def _plain(value):
    try:
        return float(value) if not isinstance(value, (int, str)) else value
    except (TypeError, ValueError):
        return value
