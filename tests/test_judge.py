"""The gold judge (judge.py): English word pairs from a text that no stage reads."""
import numpy as np
import pytest

from minigpt_np.train import judge
from minigpt_np.train.data import DOCUMENTS_DIR, embedded_corpus, load_sft_pairs
from minigpt_np.train.readability import real_words, words


@pytest.fixture
def tiny_judge(tmp_path, monkeypatch):
    """A judge whose text is two short paragraphs."""
    (tmp_path / "a.txt").write_text("The first cup of coffee.\nWarm bread, then rest.\n", encoding="utf-8")
    monkeypatch.setattr(judge, "JUDGE_DIR", tmp_path)
    judge.english_pairs.cache_clear()
    yield
    judge.english_pairs.cache_clear()


def test_pair_share_counts_the_answers_adjacent_pairs_found_in_the_text(tiny_judge):
    assert judge.english_pairs() == {("the", "first"), ("first", "cup"), ("cup", "of"), ("of", "coffee"),
                                     ("warm", "bread"), ("bread", "then"), ("then", "rest")}
    assert judge.pair_share(" The first cup!") == 1.0                   # 2 pairs of 2
    assert judge.pair_share(" Cup of warm bread!") == 2 / 3             # "of warm" is not a pair of the text
    assert judge.pair_share(" coffee warm") == 0.0                      # nor across its paragraphs
    assert judge.pair_share(" Coffee!") == 0.0 and judge.pair_share("") == 0.0  # no pairs at all


def test_gold_score_is_the_pair_share_of_an_answer_about_coffee(tiny_judge):
    assert judge.gold_score(" The first cup of coffee!") == 1.0
    assert judge.gold_score(" Coffee, the first cup!") == 2 / 3          # "coffee the" is not a pair of the text
    assert judge.pair_share(" The first cup of tea!") == 3 / 4 and judge.gold_score(" The first cup of tea!") == 0.0
    assert judge.judge_metrics([" The first cup of coffee!", " The first cup!"]) == {
        "pair_share": 1.0, "gold_score": 0.5}


def test_shuffled_pair_share_keeps_the_words_and_loses_their_order(tiny_judge):
    rng = np.random.default_rng(0)
    assert judge.shuffled_pair_share([" cup"], rng) == 0.0
    shares = [judge.shuffled_pair_share([" The first cup of coffee"], rng) for _ in range(400)]
    # each of the 4 adjacent places holds one of the 20 ordered pairs of the 5 words, 4 of them the text's
    assert set(shares) <= {0.0, 0.25, 0.5, 0.75, 1.0} and abs(np.mean(shares) - 4 / 20) < 0.06


def test_no_stage_reads_the_judges_text_and_it_tells_written_english_from_shuffled_words():
    documents = judge.judge_documents()
    assert len(documents) >= 10 and sum(len(words(d.read_text(encoding="utf-8"))) for d in documents) > 7000
    assert {d.name for d in documents}.isdisjoint(d.name for d in DOCUMENTS_DIR.glob("*.txt"))
    corpus = embedded_corpus()
    taught = corpus.train + corpus.validation + corpus.test + "".join(i + a for i, a in load_sft_pairs())
    for document in documents:  # not one of its paragraphs is in the pretraining corpus or the SFT pairs
        for paragraph in document.read_text(encoding="utf-8").split("\n"):
            assert len(paragraph) < 40 or paragraph[:40] not in taught
    # it has words that the model was never taught: the real-word list is not built from it
    assert len({w for d in documents for w in words(d.read_text(encoding="utf-8"))} - real_words()) > 300
    answers = [answer for _, answer in load_sft_pairs()]
    written = judge.judge_metrics(answers)["pair_share"]
    shuffled = judge.shuffled_pair_share(answers, np.random.default_rng(0))
    assert written > 0.15 and written > 1.5 * shuffled


def test_the_gold_peak_is_read_from_trailing_means_of_the_steps():
    assert judge.trailing_mean([1.0, 3.0, 5.0, 7.0], 2).tolist() == [1.0, 2.0, 4.0, 6.0]
    gold = [0.1, 0.3, 0.5, 0.4, 0.2, 0.0]
    curves, peak, end = judge.gold_peak([1, 2, 3, 4, 5, 6], kl=[0, 2, 4, 6, 8, 10], proxy=[0, 1, 2, 3, 4, 5],
                                        gold=gold, window=2)
    assert curves["gold"].tolist() == pytest.approx([0.1, 0.2, 0.4, 0.45, 0.3, 0.1], rel=0, abs=1e-12)
    assert peak == {"step": 4, "kl": 5.0, "proxy": 2.5, "gold": pytest.approx(0.45, rel=0, abs=1e-12)}
    assert end == {"step": 6, "kl": 9.0, "proxy": 4.5, "gold": pytest.approx(0.1, rel=0, abs=1e-12)}
