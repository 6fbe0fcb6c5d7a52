"""The character model written the usual PyTorch way, holding rnnfast's weights: what the scenarios
that measure a user's job (train-step, time-to-loss, the sweep, generation) hold rnnfast to.

Model: ``nn.Embedding`` -> ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (time-major) -> ``nn.Linear``, with
the parameter names of :class:`rnnfast.models.CharRNN` (``embed.weight``, ``rnn.weight_ih_l0``, ...,
``head.weight``, ``head.bias``), so one ``state_dict`` loads into the other. Training step, as in
PyTorch's own word_language_model example: ``zero_grad`` -> forward from the carried state ->
``F.cross_entropy`` -> ``loss.backward()`` -> ``clip_grad_norm_`` -> ``Adam.step()`` -> ``loss.item()``
(rnnfast's trainer reads its loss as a float every step too, to check it is finite).

Needs PyTorch; the harness imports this module only when PyTorch is installed.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

TORCH_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class TorchCharRNN(nn.Module):
    """Embedding (V, E) -> ``num_layers`` recurrent layers of ``hidden_size`` -> Linear (H -> V)."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int, cell: str,
                 nonlinearity: str = "tanh"):
        super().__init__()
        kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.embed = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = TORCH_CELLS[cell](embedding_dim, hidden_size, num_layers=num_layers, **kwargs)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids, state=None):
        """ids: (T, B) int64; state: (h,) or (h, c) as the recurrent layer's, None for zeros.
        Returns logits: (T, B, V) and the final state."""
        y, state = self.rnn(self.embed(ids), state)
        return self.head(y), state


def from_rnnfast(model) -> TorchCharRNN:
    """A TorchCharRNN with a copy of ``model``'s (an ``rf.models.CharRNN``) weights and dtype."""
    rnn = model.rnn
    weights = model.state_dict()
    vocab_size, embedding_dim = weights["embed.weight"].shape
    ref = TorchCharRNN(vocab_size, embedding_dim, rnn.hidden_size, rnn.num_layers, rnn.cell, rnn.nonlinearity)
    ref = ref.to(torch.from_numpy(weights["head.bias"]).dtype)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return ref


class TorchTrainer:
    """PyTorch's side of a training run on ``train_data`` (an ``rf.StreamBatcher``, read as
    ``rnnfast.Trainer`` reads it): the step the usual way, the state carried between batches
    (truncated BPTT), and an evaluation that follows :meth:`rnnfast.models.CharRNN.evaluate`."""

    def __init__(self, model: TorchCharRNN, train_data, lr: float, clip: float):
        self.model, self.train_data, self.clip = model, train_data, clip
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.state = None

    def one_step(self) -> float:
        """One optimizer update on the next batch ``(x, y)``, each (T, B) ids; returns the loss. The
        carried state is forgotten when the streams start over, as ``rnnfast.Trainer`` does."""
        if self.train_data.batch_in_epoch == 0:
            self.state = None
        x, y = (torch.from_numpy(a).long() for a in next(self.train_data))
        self.model.train()
        self.optimizer.zero_grad()
        logits, state = self.model(x, self.state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        return loss.item()

    @torch.no_grad()
    def evaluate(self, batches) -> float:
        """Mean next-token loss (nats) over ``batches``: consecutive ``(x, y)`` pairs, each (T, B),
        read with the state carried from one to the next, in eval mode."""
        self.model.eval()
        total, count, state = 0.0, 0, None
        for x, y in batches:
            logits, state = self.model(torch.from_numpy(x).long(), state)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).long().reshape(-1),
                                     reduction="sum").item()
            count += y.size
        return total / count

    def run(self, val_batches, time_budget: float, eval_every: int) -> dict:
        """Train for ``time_budget`` seconds, evaluating on ``val_batches`` every
        ``eval_every`` steps and once more at the end unless the last step was just evaluated: the
        loop of ``rnnfast.Trainer.run(time_budget=...)``. Returns ``{"step", "best_val", "elapsed"}``
        (elapsed up to the end of the last evaluation)."""
        start = time.perf_counter()
        step, best, last_eval = 0, math.inf, None
        while time.perf_counter() - start < time_budget:
            self.one_step()
            step += 1
            if step % eval_every == 0:
                best, last_eval = min(best, self.evaluate(val_batches)), step
        if last_eval != step:
            best = min(best, self.evaluate(val_batches))
        return {"step": step, "best_val": best, "elapsed": time.perf_counter() - start}


def torch_grads(model: TorchCharRNN) -> dict:
    """name -> the parameter's gradient as a NumPy array (zeros where it has none)."""
    return {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().numpy()
            for k, p in model.named_parameters()}
