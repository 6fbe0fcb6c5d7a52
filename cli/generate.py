"""``rnnfast generate``: sample text from a character (or word) model's checkpoint."""
from __future__ import annotations

import secrets
from pathlib import Path

import click

from rnnfast.checkpoint import load_model
from rnnfast.cli.common import Command, config_option, device_option, resolve_device
from rnnfast.errors import CheckpointError
from rnnfast.models import CharRNN
from rnnfast.models.sampling import default_prime
from rnnfast.tasks import text_vocab


def load_char_model(checkpoint: Path):
    """A character model and its vocabulary (of characters, or words) from a checkpoint; any other
    model is a one-line error."""
    model, meta = load_model(checkpoint)
    if not isinstance(model, CharRNN):
        raise CheckpointError(f"{checkpoint} holds a {type(model).__name__}, not a character model; "
                              "generate needs a checkpoint of 'rnnfast train --task charlm'")
    if "vocab" not in meta:
        raise CheckpointError(f"{checkpoint} has no vocabulary in its metadata; generate needs a checkpoint "
                              "written by 'rnnfast train' (or a Trainer given meta={'vocab': vocab.to_dict()})")
    return model, text_vocab(meta, checkpoint)


@click.command("generate", cls=Command)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--prime", default=None,
              help="Text the sample starts from and continues (a word model reads a word it lacks as <unk>)  "
                   "[default: a new line, if the model knows it; a word model's: a full stop]")
@click.option("--length", type=click.IntRange(min=1), default=500, show_default=True,
              help="Characters (a word model's: words) to generate after the prime.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.8, show_default=True,
              help="Below 1: safer, more repetitive text; above 1: wilder; 0: always the likeliest character.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Draw only from the k likeliest characters.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Draw only from the likeliest characters whose probabilities add up to p (nucleus sampling).")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seed of the sampling: the same seed gives the same text.  [default: a fresh one, printed on stderr]")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Independent samples, generated together as one batch.")
@click.option("--stream/--no-stream", default=False, show_default=True,
              help="Print characters as they are generated (one sample).")
@device_option("cpu")
@config_option
def generate(checkpoint, prime, length, temperature, top_k, top_p, seed, num_samples, stream, device):
    """Generate text from CHECKPOINT, a character model from 'rnnfast train'.

    Prints the prime followed by the generated characters. With --num-samples N,
    prints N samples, each under a '--- sample k of N ---' line. A model of
    --tokens word writes words (and <unk>) with one space between them.
    """
    if stream and num_samples > 1:
        raise click.UsageError("--stream prints one sample as it is generated; use it with --num-samples 1")
    device = resolve_device(device)
    model, vocab = load_char_model(checkpoint)
    if device == "gpu":
        model.to("gpu")
    if prime is None:
        prime = default_prime(vocab)
    if not vocab.encode(prime).size:  # an empty prime, or a word model's of whitespace alone
        raise click.UsageError(f"--prime {prime!r} holds no {'character' if vocab.unit == 'char' else 'word'} "
                               "to start from; give some text")
    chosen_seed = secrets.randbelow(2**31) if seed is None else seed
    on_piece = (lambda piece: click.echo(piece, nl=False)) if stream else None
    if device == "cpu" and not model.sampling_compiled:
        # This run samples step by step (fast enough for one text, no compile to wait for); the
        # compiled loop is built meanwhile for the next run.
        model.compile_sampling_in_background()
    texts = model.sample(prime, length, temperature=temperature, top_k=top_k, top_p=top_p, seed=chosen_seed,
                         num_samples=num_samples, vocab=vocab, stream=on_piece)
    if stream:
        click.echo()
    elif num_samples == 1:
        click.echo(texts)
    else:
        for k, text in enumerate(texts, 1):
            click.echo(f"--- sample {k} of {num_samples} ---")
            click.echo(text)
    if seed is None:
        click.echo(f"(seed {chosen_seed}: pass --seed {chosen_seed} to get this text again)", err=True)
