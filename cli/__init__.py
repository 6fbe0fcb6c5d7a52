"""The ``rnnfast`` command line (Click): train, tune, generate, eval, predict, export and bench."""
import click

from rnnfast import __version__
from rnnfast.cli.bench import bench
from rnnfast.cli.common import Command
from rnnfast.cli.eval import eval_command
from rnnfast.cli.export import export
from rnnfast.cli.generate import generate
from rnnfast.cli.predict import predict
from rnnfast.cli.train import train
from rnnfast.cli.tune import tune


class Group(click.Group):
    command_class = Command  # every subcommand gets one-line errors


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rnnfast")
def main():
    """rnnfast: train, sample and benchmark recurrent networks (RNN, LSTM, GRU) on CPU or GPU.

    \b
    Start here (trains on the built-in corpus, about three minutes on two cores):
      rnnfast train
      rnnfast generate runs/<run>/best.safetensors --prime "WREN:"
      rnnfast eval runs/<run>/best.safetensors
      rnnfast predict runs/<run>/best.safetensors my_text.txt
      rnnfast bench
    """


for command in (train, tune, generate, eval_command, predict, export, bench):
    main.add_command(command)
