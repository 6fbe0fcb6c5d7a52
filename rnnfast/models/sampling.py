"""Sampling from a character model: the rule (:func:`sample_from_logits`, the specification every
compiled generator follows) and :class:`CharSampling`, which gives :class:`~rnnfast.models.CharRNN`
its ``sample`` method: one forward step per id through the layers' kernels, or the CPU's compiled
sampling loop (:mod:`rnnfast.kernels.cpu.generate`) when it is ready or pays for its compile.
"""
from __future__ import annotations

import numpy as np

from rnnfast.backend import get_backend, to_numpy
from rnnfast.data import BOS, EOS, PAD, TokenVocab
from rnnfast.models.base import resolve_seed
from rnnfast.random import uniform


def default_prime(vocab) -> str:
    """What a sample starts from when it is given no prime: a new line (so it starts as a line of
    the text starts) if ``vocab`` has one, else its first character. A word vocabulary has no line
    breaks (the word split drops them), so a full stop, after which a sentence starts, else its
    first word."""
    start = "\n" if vocab.unit == "char" else "."
    return start if start in vocab.tokens else vocab.tokens[0]


def unwritten_ids(vocab) -> tuple:
    """The ids a sample never draws: a :class:`~rnnfast.data.TokenVocab`'s <pad>, <bos> and <eos>.
    A word model's text holds none of them (its <unk> stands for rare words, which it does hold),
    so they are never its targets, and decoding would drop them or stop at <eos>."""
    return (PAD, BOS, EOS) if isinstance(vocab, TokenVocab) else ()


def sample_from_logits(logits, u, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """Draw one id per row by the sampling rule of :meth:`CharRNN.sample` (the specification that any
    compiled generator follows).

    logits: (S, V); u: (S,) uniforms in [0, 1) -> ids: (S,) int32. All arithmetic in float64:

    1. ``top_k``: keep the logits >= the k-th largest of the row (ties at the boundary stay).
    2. ``top_p``: with ``e = exp(logit - max)`` over the kept ids, visit them by descending ``e`` (ties
       by ascending id) and keep each while the mass visited before it is ``< top_p * sum(e)``; the
       most likely id always stays.
    3. ``temperature``: weights ``w = exp((logit - max) / temperature)`` on the kept ids, 0 elsewhere.
    4. Inverse CDF: ``c = cumsum(w)`` in id order; the id drawn is the first with ``c > u * c[-1]``.

    ``temperature == 0`` draws the largest logit (the first on ties), i.e. greedy decoding.
    """
    logits = np.asarray(logits, dtype=np.float64)
    num_ids = logits.shape[1]
    keep = np.ones(logits.shape, dtype=bool)
    if top_k is not None and top_k < num_ids:
        kth = -np.partition(-logits, top_k - 1, axis=1)[:, top_k - 1 : top_k]
        keep = logits >= kth
    z = np.where(keep, logits - logits.max(axis=1, keepdims=True), -np.inf)
    if top_p is not None and top_p < 1.0:
        e = np.exp(z)
        order = np.argsort(-e, axis=1, kind="stable")
        sorted_e = np.take_along_axis(e, order, axis=1)
        mass_before = np.cumsum(sorted_e, axis=1) - sorted_e
        in_nucleus = np.zeros_like(keep)
        np.put_along_axis(in_nucleus, order, mass_before < top_p * sorted_e.sum(axis=1, keepdims=True), axis=1)
        keep &= in_nucleus
        z = np.where(keep, z, -np.inf)
    if temperature == 0:
        return z.argmax(axis=1).astype(np.int32)
    c = np.cumsum(np.exp(z / temperature), axis=1)
    return (c > (np.asarray(u, np.float64) * c[:, -1])[:, None]).argmax(axis=1).astype(np.int32)



class CharSampling:
    """``sample`` and its two paths, for a model with children ``embed``, ``rnn`` and ``head`` and a
    ``forward(ids, state)`` giving logits (T, B, V) (:class:`~rnnfast.models.CharRNN`)."""

    def sample(self, prime, length: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, num_samples: int = 1, vocab=None, stream=None,
               compiled: bool | None = None):
        """Generate ``length`` characters after ``prime``, ``num_samples`` at once (the batch).

        ``prime``: a string (needs ``vocab``; an unknown character is a DataError, an unknown word
        of a word vocabulary reads as <unk>) or ids. With a word ``vocab`` the ids of
        :func:`unwritten_ids` are never drawn, and the text's words are joined by spaces. Each new
        id is drawn by :func:`sample_from_logits` with the uniforms
        ``rnnfast.random.uniform((num_samples, length), seed, stream=0, dtype=float64)``, so a seed
        gives the same text on the CPU and the GPU. ``stream``, if given, is called with the prime and
        then each new piece as it comes (a string, or a list of one per sample when
        ``num_samples > 1``; ids without ``vocab``); the pieces joined are the returned text.

        ``compiled`` (CPU): True runs the whole loop as one compiled call, compiling it first if this
        dtype's loop is not compiled or cached yet (6-8 s, once); False runs one forward step per id
        through the layers' kernels; None (the default) takes the compiled loop when it is ready or
        when ``num_samples * length`` reaches ``GENERATE_COMPILE_PAYS_AT``, where compiling pays. Both
        give the same ids.

        Returns the prime plus the generated text: a string (a list of ``num_samples`` strings), or
        without ``vocab`` ids: (P + length,) int32 ((num_samples, P + length)).
        """
        if not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"length must be a non-negative integer, got {length!r}")
        if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if isinstance(prime, str):
            if vocab is None:
                raise ValueError("a text prime needs the vocabulary: pass vocab= (a checkpoint's meta has it) or ids")
            prime_ids = vocab.encode(prime)
        else:
            prime_ids = np.asarray(to_numpy(prime)).reshape(-1).astype(np.int32)
        if prime_ids.size == 0:
            raise ValueError("the prime is empty; give at least one character to start from")
        seed = resolve_seed(seed)
        u = uniform((num_samples, length), seed, stream=0, xp=np, dtype=np.float64)

        def emit(ids, first=False):
            if stream is None:
                return
            if vocab is None:
                stream(ids if num_samples > 1 else ids[0])
            else:  # each piece after the prime follows the text before it, as decode joins them
                texts = [("" if first else vocab.separator) + vocab.decode(row) for row in ids]
                stream(texts if num_samples > 1 else texts[0])

        # (V,) added to the head's logits: -inf on the ids never drawn, or None
        never = unwritten_ids(vocab)
        mask = None
        if never:
            mask = np.zeros(self.vocab_size, dtype=self.head.params["bias"].dtype)
            mask[list(never)] = -np.inf
        out = np.empty((num_samples, prime_ids.size + length), dtype=np.int32)
        out[:, : prime_ids.size] = prime_ids
        emit(out[:, : prime_ids.size], first=True)
        was_training = self.training
        self.eval()
        try:
            generate = self._compiled_sampler(compiled, num_samples * length)
            if generate is not None:
                self._sample_compiled(generate, prime_ids, u, temperature, top_k, top_p, out, emit,
                                      chunk=length if stream is None else 16, mask=mask)
            else:
                self._sample_stepwise(prime_ids, u, temperature, top_k, top_p, out, emit, mask=mask)
        finally:
            self.train(was_training)
        if vocab is None:
            return out if num_samples > 1 else out[0]
        texts = [vocab.decode(row) for row in out]
        return texts if num_samples > 1 else texts[0]

    def _compiled_sampler(self, compiled, ids):
        """The backend's compiled sampling loop when :meth:`sample` should use it (see ``compiled``), else None."""
        kernels = get_backend(self.head.params["weight"]).kernels
        generate = getattr(kernels, "generate", None)  # only the CPU has one
        if generate is None or compiled is False or self.rnn.layer_norm:
            return None  # layer norm is in the layers' kernels, not in the compiled loop
        if compiled or ids >= kernels.GENERATE_COMPILE_PAYS_AT or self.sampling_compiled:
            return generate
        return None

    @property
    def sampling_compiled(self) -> bool:
        """Whether the CPU's compiled sampling loop for this model's dtype is ready (compiled in this
        process or in Numba's cache); False on a backend without one."""
        kernels = get_backend(self.head.params["weight"]).kernels
        ready = getattr(kernels, "generate_compiled_for", None)
        return ready is not None and ready(self.head.params["weight"].dtype)

    def compile_sampling_in_background(self) -> None:
        """Compile the CPU sampling loop for this model's dtype into Numba's cache in a detached
        process, so that later processes (the next ``rnnfast generate``) find it ready. Does nothing
        on a backend without one."""
        start = getattr(get_backend(self.head.params["weight"]).kernels, "compile_generate_in_background", None)
        if start is not None:
            start(self.head.params["weight"].dtype)

    def _sample_stepwise(self, prime_ids, u, temperature, top_k, top_p, out, emit, mask=None):
        """The plain path of :meth:`sample` (any device, and the CPU path's specification): one
        forward step and one :func:`sample_from_logits` per id, of the logits plus ``mask`` (V,) if
        given. Fills out[:, P:], emitting each id."""
        num_samples, P = out.shape[0], prime_ids.size
        logits, state = self.forward(np.repeat(prime_ids[:, None], num_samples, axis=1))
        for t in range(u.shape[1]):
            step_logits = to_numpy(logits[-1]) if mask is None else to_numpy(logits[-1]) + mask
            next_ids = sample_from_logits(step_logits, u[:, t], temperature, top_k, top_p)
            out[:, P + t] = next_ids
            emit(next_ids[:, None])
            if t + 1 < u.shape[1]:
                logits, state = self.forward(next_ids[None, :], state)

    def _sample_compiled(self, generate, prime_ids, u, temperature, top_k, top_p, out, emit, chunk, mask=None):
        """:meth:`sample` on a backend with a compiled sampling loop (``generate``, the CPU's
        :func:`rnnfast.kernels.cpu.generate.generate`: same rule and uniforms as the step loop), one
        call per ``chunk`` ids so a stream still sees text as it comes; ``mask`` (V,), if given, is
        added to the head's bias. Fills out[:, P:], emitting each chunk."""
        rnn = self.rnn
        bias = self.head.params["bias"] if mask is None else self.head.params["bias"] + mask
        cell = rnn.spec.name
        weights = [rnn.direction_weights(layer) for layer in range(rnn.num_layers)]
        num_samples, P = out.shape[0], prime_ids.size
        state = rnn.zero_state(num_samples)
        feed = np.repeat(prime_ids[None, :], num_samples, axis=0)
        for start in range(0, u.shape[1], max(chunk, 1)):
            ids, state = generate(cell, weights, self.embed.params["weight"], self.head.params["weight"],
                                  bias, state, feed, u[:, start:start + chunk],
                                  temperature, top_k, top_p, zoneout=rnn.zoneout)
            out[:, P + start:P + start + ids.shape[1]] = ids
            emit(ids)
            feed = ids[:, -1:]

