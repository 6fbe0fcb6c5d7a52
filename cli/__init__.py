"""The ``rnnfast`` command line (Click)."""
import click

from rnnfast import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rnnfast")
def main():
    """rnnfast: train, sample and benchmark recurrent networks (RNN, LSTM, GRU) on CPU or GPU."""
