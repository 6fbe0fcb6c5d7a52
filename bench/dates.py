"""A real normalisation task for the translate model: dates written many ways -> ISO 8601.

Every pair is ``(source, target)`` with ``target`` the date as ``YYYY-MM-DD`` and ``source`` the same
date in one of :data:`FORMATS`, drawn uniformly, for a date drawn uniformly from 1950-01-01 to
2049-12-31. Each format is a template of fields (:data:`FIELDS`); a source may also start with its
weekday (the true one, ``"Thursday, "`` or ``"Thu "``) and is written as the template has it
(title case), in lower case or in upper case. Nothing is downloaded.

Which number is the day is fixed by each format's own shape, so every source has exactly one
reading (:func:`parse` finds it with the same templates):

- slashes with a four-digit year are day-first (``07/03/2024``: 7 March, as in Britain), slashes with
  a two-digit year month-first (``3/7/24``: 7 March, as in the US); dots are day-first with a year
  last (``7.3.2024``) and year-first with it first (``2024.03.07``);
- a two-digit year ``yy`` is 19yy from 50 and 20yy below (the range is 1950-2049).

    >>> make_pairs(2, seed=0)
    [('wednesday, 24-jan-2035', '2035-01-24'), ('THU SEPTEMBER 12TH, 2013', '2013-09-12')]

``python -m rnnfast.bench.dates --out dates.tsv --pairs 20000 --seed 0`` writes them as a TSV with a
``source<TAB>target`` header.
"""
from __future__ import annotations

import argparse
import calendar
import datetime
import re

import numpy as np

FIRST, LAST = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)

MONTHS = tuple(calendar.month_name[1:])           # January ... December
MONTH_ABBRS = tuple(calendar.month_abbr[1:])      # Jan ... Dec
WEEKDAYS = tuple(calendar.day_name)               # Monday ... Sunday (date.weekday()'s order)
WEEKDAY_ABBRS = tuple(calendar.day_abbr)          # Mon ... Sun


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _two_digit_year(yy: int) -> int:
    return 1900 + yy if yy >= 50 else 2000 + yy


# field -> (how a date writes it, the regex that reads it back, what it reads: "day"/"month"/"year"/
# "weekday", and how the matched text becomes that number)
FIELDS = {
    "d": (lambda d: str(d.day), r"\d{1,2}", "day", int),
    "dd": (lambda d: f"{d.day:02d}", r"\d{2}", "day", int),
    "dth": (lambda d: _ordinal(d.day), r"\d{1,2}(?:st|nd|rd|th)", "day", lambda s: int(s[:-2])),
    "m": (lambda d: str(d.month), r"\d{1,2}", "month", int),
    "mm": (lambda d: f"{d.month:02d}", r"\d{2}", "month", int),
    "Month": (lambda d: MONTHS[d.month - 1], "|".join(MONTHS), "month", lambda s: _index(MONTHS, s) + 1),
    "Mon": (lambda d: MONTH_ABBRS[d.month - 1], "|".join(MONTH_ABBRS), "month",
            lambda s: _index(MONTH_ABBRS, s) + 1),
    "yyyy": (lambda d: str(d.year), r"\d{4}", "year", int),
    "yy": (lambda d: f"{d.year % 100:02d}", r"\d{2}", "year", lambda s: _two_digit_year(int(s))),
    "Weekday": (lambda d: WEEKDAYS[d.weekday()], "|".join(WEEKDAYS), "weekday", lambda s: _index(WEEKDAYS, s)),
    "Wkd": (lambda d: WEEKDAY_ABBRS[d.weekday()], "|".join(WEEKDAY_ABBRS), "weekday",
            lambda s: _index(WEEKDAY_ABBRS, s)),
}


def _index(names, text: str) -> int:
    return [n.lower() for n in names].index(text.lower())


# The source formats, as templates of {field}s. The weekday prefix is added to those without one.
FORMATS = (
    "{d} {Month} {yyyy}",             # 7 March 2024
    "{Month} {d}, {yyyy}",            # March 7, 2024
    "{Month} {d} {yyyy}",             # March 7 2024 (MARCH 7 2024 in upper case)
    "{dth} of {Month} {yyyy}",        # 7th of March 2024
    "{Month} {dth}, {yyyy}",          # March 7th, 2024
    "{d} {Mon} {yyyy}",               # 7 Mar 2024
    "{Mon} {d}, {yyyy}",              # Mar 7, 2024
    "{Wkd} {d} {Mon} {yy}",           # Thu 7 Mar 24
    "{dd}-{Mon}-{yyyy}",              # 07-Mar-2024
    "{dd}/{mm}/{yyyy}",               # 07/03/2024: day-first (four-digit year)
    "{m}/{d}/{yy}",                   # 3/7/24: month-first (two-digit year)
    "{d}.{m}.{yyyy}",                 # 7.3.2024: day-first
    "{yyyy}.{mm}.{dd}",               # 2024.03.07
    "{yyyy}/{mm}/{dd}",               # 2024/03/07
    "{yyyy}-{mm}-{dd}",               # 2024-03-07 (already ISO: the model must copy it)
    "{yyyy}{mm}{dd}",                 # 20240307
)
WEEKDAY_PREFIXES = ("{Weekday}, ", "{Wkd} ")
WEEKDAY_P = 0.25          # a source without a weekday in its format gets one this often
CASES = ("title", "lower", "upper")
_FIELD = re.compile(r"\{(\w+)\}")


def render(template: str, date: datetime.date) -> str:
    """``template``'s fields filled in from ``date`` (title case)."""
    return _FIELD.sub(lambda m: FIELDS[m.group(1)][0](date), template)


def _templates():
    """Every template a source can come from: each format alone, and with each weekday prefix
    where the format has no weekday of its own."""
    for fmt in FORMATS:
        yield fmt
        if "{W" not in fmt:
            yield from (prefix + fmt for prefix in WEEKDAY_PREFIXES)


def _pattern(template: str):
    parts, fields, pos = [], [], 0
    for m in _FIELD.finditer(template):
        parts += [re.escape(template[pos:m.start()]), f"({FIELDS[m.group(1)][1]})"]
        fields.append(m.group(1))
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts), re.IGNORECASE), fields


_PATTERNS = [_pattern(t) for t in _templates()]


def parse(source: str) -> set[datetime.date]:
    """Every date ``source`` reads as under the generator's templates (any case): one date for each
    source :func:`make_pairs` writes, none for text no template fits. A weekday that the date
    does not fall on, or a day the month lacks, makes that reading no date."""
    found = set()
    for regex, fields in _PATTERNS:
        m = regex.fullmatch(source)
        if m is None:
            continue
        values = {FIELDS[f][2]: FIELDS[f][3](text) for f, text in zip(fields, m.groups())}
        try:
            date = datetime.date(values["year"], values["month"], values["day"])
        except ValueError:
            continue
        if values.get("weekday", date.weekday()) == date.weekday():
            found.add(date)
    return found


def _cased(text: str, case: str) -> str:
    return {"title": text, "lower": text.lower(), "upper": text.upper()}[case]


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` pairs ``(source, "YYYY-MM-DD")``, the same for the same ``seed``: each a uniform date
    in 1950-2049 written in a uniform format of :data:`FORMATS` (with a weekday prefix at rate
    ``WEEKDAY_P`` where the format has none) in a uniform case of :data:`CASES`."""
    rng = np.random.default_rng(seed)
    days = rng.integers(0, (LAST - FIRST).days + 1, size=n)
    formats = rng.integers(0, len(FORMATS), size=n)
    prefixed = rng.random(n) < WEEKDAY_P
    prefixes = rng.integers(0, len(WEEKDAY_PREFIXES), size=n)
    cases = rng.integers(0, len(CASES), size=n)
    pairs = []
    for day, f, p, prefix, case in zip(days, formats, prefixed, prefixes, cases):
        date = FIRST + datetime.timedelta(days=int(day))
        template = FORMATS[f]
        if p and "{W" not in template:
            template = WEEKDAY_PREFIXES[prefix] + template
        pairs.append((_cased(render(template, date), CASES[case]), date.isoformat()))
    return pairs


def write_tsv(path, pairs) -> None:
    """``pairs`` as a TSV: a ``source<TAB>target`` header, then one pair a line."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("source\ttarget\n")
        f.writelines(f"{source}\t{target}\n" for source, target in pairs)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rnnfast.bench.dates", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, metavar="PATH", help="the TSV to write")
    parser.add_argument("--pairs", type=int, default=20000, help="how many pairs (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same file (default 0)")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    write_tsv(args.out, make_pairs(args.pairs, args.seed))


if __name__ == "__main__":
    main()
