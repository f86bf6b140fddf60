"""Command line for the estimator: ``python -m services.indexing estimate RESPONSES.csv --design DESIGN.json``.

Why a CLI beside the service: statisticians re-run a wave's figures from a CSV export (and check
them against R) without a database or a running service.  Output is the JSON of
:func:`services.indexing.estimation.estimate` on stdout; bad input is one clear line on stderr
and exit code 2, so scripts can tell "your file is wrong" (2) from a crash (1).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from services.indexing.estimation import (
    LONELY_PSU_RULES,
    EstimationInputError,
    estimate,
    read_design_json,
    read_responses_csv,
)

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.indexing",
        description="SIPAS indexing: design-based estimation of the satisfaction indices.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    est = sub.add_parser(
        "estimate",
        help="compute item, element and overall indices with Taylor-linearised SEs",
        description="Print national, provincial and unweighted (official) indices as JSON.",
    )
    est.add_argument("responses", metavar="RESPONSES.csv",
                     help="accepted forms: stratum, weight, province, item columns, optional psu and fpc")
    est.add_argument("--design", required=True, metavar="DESIGN.json",
                     help="design card: elements -> items, satisfied answers, optional parts and clustered")
    est.add_argument("--lonely-psu", choices=LONELY_PSU_RULES, default=None,
                     help="rule for strata with a single PSU (default: the design card's, else 'adjust')")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "estimate":
        try:
            design = read_design_json(args.design)
            responses = read_responses_csv(args.responses, design.items)
            from services.indexing.compute import _threadpool_limit

            with _threadpool_limit():
                result = estimate(responses, design, lonely_psu=args.lonely_psu)
        except EstimationInputError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return EXIT_BAD_INPUT
        json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    return EXIT_BAD_INPUT  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
