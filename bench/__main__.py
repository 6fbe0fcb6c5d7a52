"""``python -m rnnfast.bench [--full | --sweep [--plot PATH]] [--json PATH] [--cells CELL ...] [--repeats N]
[--device cpu|gpu] [--data PATH]``."""
import argparse
import json
import sys

from rnnfast.bench import format_table, run_bench
from rnnfast.bench.scenarios import CELLS


def _progress(row):
    name = row.get("scenario", "machine")
    print(f"  {name}: {row.get('error', 'done')}", file=sys.stderr, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rnnfast.bench", description=__doc__)
    parser.add_argument("--full", action="store_true", help="every scenario, not the quick set")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--cells", nargs="+", choices=CELLS + ("rnn",), help="only these cells")
    parser.add_argument("--repeats", type=int, help="timed rounds per scenario (median reported)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--sweep", action="store_true",
                        help="the training step over hidden size and sequence length, time and peak memory, plotted")
    parser.add_argument("--plot", metavar="PATH", default="sweep.png", help="where --sweep writes its PNG")
    parser.add_argument("--data", metavar="PATH", help="corpus of the time-to-loss scenario (--full)")
    args = parser.parse_args(argv)
    if args.sweep and (args.full or args.device != "cpu"):
        parser.error("--sweep runs on its own on the CPU; drop --full / --device gpu")
    results = run_bench(full=args.full, device=args.device, cells=args.cells, repeats=args.repeats,
                        progress=_progress, data=args.data, sweep=args.sweep)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.sweep:
        from rnnfast.bench.sweep import plot_sweep

        try:
            print(f"wrote {plot_sweep(results, args.plot)}", file=sys.stderr)
        except RuntimeError as exc:
            sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
