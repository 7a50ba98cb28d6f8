"""`python -m rinha.bench k6 --scenario final|preview ...` runs an official scenario against the
whole stack (k6run.py); anything else, including no arguments, goes to the micro-benchmarks,
which read their own options."""

import sys


def main() -> int | None:
    if sys.argv[1:2] == ["k6"]:
        from rinha.bench.k6run import main as k6_main

        return k6_main(sys.argv[2:])
    from rinha.bench.micro import main as micro_main

    return micro_main()


sys.exit(main())
