"""One character vocabulary for all three stages, built before pretraining and saved with every checkpoint.

Building it once, from every text the pipeline will see, means SFT and RL never rebuild it: the
embedding rows and the output head keep their meaning from stage to stage.
"""
import warnings

import numpy as np

UNKNOWN = "\ufffd"  # the replacement character stands for anything outside the vocabulary


class CharTokenizer:
    def __init__(self, chars):
        chars = list(chars)
        if UNKNOWN not in chars:
            chars.append(UNKNOWN)
        if len(set(chars)) != len(chars):
            raise ValueError("the vocabulary lists a character twice")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        self.unknown_id = self.index[UNKNOWN]

    @classmethod
    def from_texts(cls, texts):
        """The sorted set of characters in the texts, plus the unknown character."""
        seen = set()
        for text in texts:
            seen.update(text)
        seen.discard(UNKNOWN)
        return cls(sorted(seen) + [UNKNOWN])

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        """Text -> int64 ids. Characters outside the vocabulary become the unknown id, with a warning."""
        ids = np.fromiter((self.index.get(c, self.unknown_id) for c in text), dtype=np.int64, count=len(text))
        if (ids == self.unknown_id).any():
            unknown = sorted({c for c in text if c not in self.index})
            if unknown:
                warnings.warn(f"{len(unknown)} character(s) outside the vocabulary map to the unknown id: "
                              f"{''.join(unknown)[:40]!r}", stacklevel=2)
        return ids

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)

    def to_list(self):
        return list(self.chars)

    def __eq__(self, other):
        return isinstance(other, CharTokenizer) and self.chars == other.chars
