"""The pictures of the inside: the attention weights are the ones the model's own forward uses."""
import numpy as np

from minigpt_np import functional as F
from minigpt_np.autograd import Tensor
from minigpt_np.config import GPTConfig
from minigpt_np.model import TinyGPT
from minigpt_np.train.checkpoint import save_checkpoint
from minigpt_np.train.inspection import answer_log_probs, attention_weights, inspect_text
from minigpt_np.train.tokenizer import CharTokenizer

from .conftest import load_cli


def test_attention_weights_give_back_the_attention_op_s_output():
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((1, 7, 3 * 2 * 3))
    P = attention_weights(qkv, 2)  # (H, T, T)
    assert np.allclose(P.sum(-1), 1.0, rtol=0, atol=1e-12) and np.all(np.triu(P, 1) == 0)
    v = qkv[0, :, 12:].reshape(7, 2, 3).transpose(1, 0, 2)  # (H, T, D)
    out = (P @ v).transpose(1, 0, 2).reshape(1, 7, 6)
    np.testing.assert_allclose(out, F.attention(Tensor(qkv), 2).data, rtol=0, atol=1e-12)


def checkpoint(tmp_path):
    tokenizer = CharTokenizer.from_texts(["Instruction: Answer: coffee!\n"])
    config = GPTConfig(vocab_size=tokenizer.vocab_size, d_model=8, n_layers=2, n_heads=2, context_length=16, dropout=0.0,
                       dtype="float64")
    model = TinyGPT(config, seed=1)
    save_checkpoint(tmp_path / "sft", model.state_dict(), config, tokenizer, stage="sft", step=0, complete=True)
    return tmp_path / "sft", model, tokenizer


def test_the_probabilities_are_the_model_s_and_each_answer_character_sees_the_sampler_s_window(tmp_path):
    folder, model, tokenizer = checkpoint(tmp_path)
    seen = inspect_text(folder, "Instruction: coffee! Answer: coffee!")
    ids = tokenizer.encode("Instruction: coffee! Answer: coffee!")[-16:]
    log_probs = F.log_softmax_array(model(ids[None]).data[0])
    np.testing.assert_allclose(seen["log_probs"], log_probs[np.arange(15), ids[1:]], rtol=0, atol=1e-12)
    assert len(seen["attention"]) == 2 and seen["attention"][0].shape == (2, 16, 16)
    prompt, answer = "Instruction: coffee!\nAnswer:", " coffee!"
    full = tokenizer.encode(prompt + answer + "\n")
    start = len(tokenizer.encode(prompt))
    expected = [F.log_softmax_array(model(full[max(0, t - 16):t][None]).data[0, -1])[full[t]]
                for t in range(start, len(full))]
    np.testing.assert_allclose(answer_log_probs(folder, prompt, answer), expected, rtol=0, atol=1e-12)


def test_the_command_writes_the_pictures_and_refuses_a_folder_without_a_checkpoint(tmp_path, capsys):
    folder, _, _ = checkpoint(tmp_path)
    inspect = load_cli("inspect_model")
    assert inspect.main([str(folder), "--text", "Answer: coffee!", "--compare", str(folder), "--answer", " coffee!",
                         "--instruction", "coffee", "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "attention.png", "inspect.md", "probabilities.png", "rl_change.png"]
    assert "log p of the answer (nats, with its newline):" in capsys.readouterr().out
    assert inspect.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    (tmp_path / "file").write_text("")
    assert inspect.main([str(folder), "--text", "Answer: coffee!", "--out", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.startswith("error: --out: cannot write to ")
